"""``chat``: conversations that survive restarts — sessions, personas, and replies stored as they stream.

It needs an LLM module (``llm``, ``ollama`` or ``llamacpp``) loaded to answer, but not to list, read or edit
sessions and personas, so it declares no dependency: ``chat.send`` says ``unavailable`` until one is loaded.
``[modules.chat]`` takes ``flush_tokens`` (default 16) and ``flush_seconds`` (0.5): how often a growing reply
is written to the store.
"""

from __future__ import annotations

from typing import Any

from daemon.module import Module
from daemon.modules.chat import service as s
from daemon.modules.chat.store import MIGRATIONS, ChatStore
from daemon.store import Store


class ChatModule(Module):
    name = "chat"
    description = "Chat sessions with personas, stored in SQLite; replies stream from the loaded LLM."
    provides = (
        "chat.send",
        "chat.regenerate",
        "session.new",
        "session.list",
        "session.get",
        "session.rename",
        "session.delete",
        "session.history",
        "persona.list",
        "persona.get",
        "persona.set",
        "persona.delete",
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.service: s.ChatService | None = None

    async def load(self) -> None:
        cfg = self.ctx.config
        flush_tokens = cfg.get("flush_tokens", 16)
        flush_seconds = cfg.get("flush_seconds", 0.5)
        if isinstance(flush_tokens, bool) or not isinstance(flush_tokens, int) or flush_tokens < 1:
            raise ValueError(f"modules.chat.flush_tokens must be a positive integer, got {flush_tokens!r}")
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, int | float) or flush_seconds <= 0:
            raise ValueError(f"modules.chat.flush_seconds must be a positive number, got {flush_seconds!r}")
        store: Store = self.ctx.services["store"]
        Store.register_migrations("chat", MIGRATIONS)
        await store.migrate("chat")
        svc = self.service = s.ChatService(
            ChatStore(store), self.ctx.hub, self.ctx.publish, flush_tokens=flush_tokens, flush_seconds=flush_seconds
        )
        reg = self.ctx.register
        reg("chat.send", svc.send, stream=True, schema=s.SEND_SCHEMA)
        reg("chat.regenerate", svc.regenerate, stream=True, schema=s.REGENERATE_SCHEMA)
        reg("session.new", svc.session_new, schema=s.SESSION_NEW_SCHEMA)
        reg("session.list", svc.session_list, schema=s.SESSION_LIST_SCHEMA)
        reg("session.get", svc.session_get, schema=s.SESSION_ID_SCHEMA)
        reg("session.rename", svc.session_rename, schema=s.SESSION_RENAME_SCHEMA)
        reg("session.delete", svc.session_delete, schema=s.SESSION_ID_SCHEMA)
        reg("session.history", svc.session_history, schema=s.SESSION_HISTORY_SCHEMA)
        reg("persona.list", svc.persona_list, schema=s.EMPTY_SCHEMA)
        reg("persona.get", svc.persona_get, schema=s.PERSONA_NAME_SCHEMA)
        reg("persona.set", svc.persona_set, schema=s.PERSONA_SET_SCHEMA)
        reg("persona.delete", svc.persona_delete, schema=s.PERSONA_NAME_SCHEMA)
