"""``chat``: conversations that survive restarts — sessions, personas, and replies stored as they stream.

It needs an LLM module (``llm``, ``ollama`` or ``llamacpp``) loaded to answer, but not to list, read or edit
sessions and personas, so it declares no dependency: ``chat.send`` says ``unavailable`` until one is loaded.
``[modules.chat]`` takes ``flush_tokens`` (default 16) and ``flush_seconds`` (0.5): how often a growing reply
is written to the store. The handlers are declared in ``daemon.modules.chat.service``; the database is the
daemon's ``Store`` service.
"""

from __future__ import annotations

from typing import Any, Final

from daemon.module import Module
from daemon.modules.chat import service as s
from daemon.modules.chat.store import MIGRATIONS, ChatStore
from daemon.store import Store

CONFIG_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "flush_tokens": {"type": "integer", "minimum": 1, "default": 16},
        "flush_seconds": {"type": "number", "exclusiveMinimum": 0, "default": 0.5},
    },
    "additionalProperties": False,
}


class ChatModule(Module):
    name = "chat"
    description = "Chat sessions with personas, stored in SQLite; replies stream from the loaded LLM."
    handlers = (s.ChatService,)
    config_schema = CONFIG_SCHEMA
    requires = (Store,)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.service: s.ChatService | None = None

    async def load(self) -> None:
        cfg = self.ctx.config
        store = self.ctx.services.get(Store)
        Store.register_migrations("chat", MIGRATIONS)
        await store.migrate("chat")
        svc = self.service = s.ChatService(
            ChatStore(store),
            self.ctx.hub,
            self.ctx.publish,
            flush_tokens=cfg["flush_tokens"],
            flush_seconds=cfg["flush_seconds"],
        )
        self.ctx.serve(svc)
