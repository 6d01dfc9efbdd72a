"""The chat handlers: sessions, personas, and ``chat.send``/``chat.regenerate`` that store as they stream.

A reply is produced by calling ``llm.chat`` through the hub (whichever LLM backend module is loaded serves it),
so this module never holds a backend. The order of writes is the durability story: the user's message is
committed and announced before generation starts; the assistant row is inserted at once with ``complete = 0``
and its text updated every ``flush_tokens`` tokens or ``flush_seconds``; the final write sets ``complete = 1``.
A cancelled or vanished client still gets its partial reply stored, marked incomplete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from bus.envelope import new_id
from bus.errors import BadRequest, Unavailable, UnknownMethod
from bus.sampling import SAMPLING_PROPERTIES, SAMPLING_SCHEMA, merge_sampling, pick_sampling
from bus.service import Call
from bus.topics import CHAT_MESSAGE
from daemon.hub import Hub
from daemon.module import method
from daemon.modules.chat.store import ChatStore
from daemon.topics import LLM_STATE

# Every stored (or finalised) message: the message map as ``session.history`` returns it.

_ID: Final = {"type": "string", "minLength": 1, "maxLength": 64}
_NAME: Final = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[A-Za-z0-9_.\-]+$"}
_TITLE: Final = {"type": "string", "maxLength": 200}

SEND_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "session_id": _ID,
        "text": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
        "persona": _NAME,
        **SAMPLING_PROPERTIES,
    },
    "required": ["text"],
}
REGENERATE_SCHEMA: Final = {
    "type": "object",
    "properties": {"session_id": _ID, **SAMPLING_PROPERTIES},
    "required": ["session_id"],
}
SESSION_NEW_SCHEMA: Final = {"type": "object", "properties": {"title": _TITLE, "persona": _NAME}}
SESSION_LIST_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
        "offset": {"type": "integer", "minimum": 0},
    },
}
SESSION_ID_SCHEMA: Final = {"type": "object", "properties": {"id": _ID}, "required": ["id"]}
SESSION_RENAME_SCHEMA: Final = {
    "type": "object",
    "properties": {"id": _ID, "title": _TITLE},
    "required": ["id", "title"],
}
SESSION_HISTORY_SCHEMA: Final = {
    "type": "object",
    "properties": {"id": _ID, "limit": {"type": "integer", "minimum": 1, "maximum": 100_000}},
    "required": ["id"],
}
PERSONA_NAME_SCHEMA: Final = {"type": "object", "properties": {"name": _NAME}, "required": ["name"]}
PERSONA_SET_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "name": _NAME,
        "system_prompt": {"type": "string", "maxLength": 100_000},
        "description": {"type": "string", "maxLength": 1000},
        "sampling": SAMPLING_SCHEMA,
    },
    "required": ["name", "system_prompt"],
}
EMPTY_SCHEMA: Final = {"type": "object"}


class ReplyWriter:
    """Keeps the assistant row in step with the stream: a write every ``flush_tokens`` tokens or
    ``flush_seconds``. Tokens are what each chunk says it stands for (one per chunk from a peer that does not
    say: a chunk holds at least one token)."""

    def __init__(self, store: ChatStore, message_id: int, flush_tokens: int, flush_seconds: float) -> None:
        self.store = store
        self.message_id = message_id
        self.text = ""
        self.tokens = 0
        self._flush_tokens = flush_tokens
        self._flush_seconds = flush_seconds
        self._since = 0
        self._last = time.monotonic()

    async def add(self, delta: str, tokens: int) -> None:
        self.text += delta
        self.tokens += tokens
        self._since += tokens
        now = time.monotonic()
        if self._since >= self._flush_tokens or now - self._last >= self._flush_seconds:
            self._since, self._last = 0, now
            await self.store.update_message(self.message_id, self.text, self.tokens, complete=False)


class ChatService:
    def __init__(
        self,
        store: ChatStore,
        hub: Hub,
        publish: Callable[[str, dict[str, Any]], None],
        *,
        flush_tokens: int = 16,
        flush_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.hub = hub
        self.publish = publish
        self.flush_tokens = flush_tokens
        self.flush_seconds = flush_seconds

    # -- sessions ---------------------------------------------------------------------------------------------
    @method("session.new", schema=SESSION_NEW_SCHEMA)
    async def session_new(self, call: Call) -> dict[str, Any]:
        """Start a conversation, optionally with a persona (its system prompt and sampling defaults)."""
        persona = call.body.get("persona")
        if persona is not None:
            await self.store.get_persona(persona)
        return await self.store.new_session(call.body.get("title", ""), persona)

    @method("session.list", schema=SESSION_LIST_SCHEMA)
    async def session_list(self, call: Call) -> dict[str, Any]:
        """Sessions, most recently active first, with their message counts."""
        sessions = await self.store.list_sessions(call.body.get("limit", 100), call.body.get("offset", 0))
        return {"sessions": sessions}

    @method("session.get", schema=SESSION_ID_SCHEMA)
    async def session_get(self, call: Call) -> dict[str, Any]:
        return await self.store.get_session(call.body["id"])

    @method("session.rename", schema=SESSION_RENAME_SCHEMA)
    async def session_rename(self, call: Call) -> dict[str, Any]:
        return await self.store.rename_session(call.body["id"], call.body["title"])

    @method("session.delete", schema=SESSION_ID_SCHEMA)
    async def session_delete(self, call: Call) -> dict[str, Any]:
        """Delete a session with all its messages."""
        removed = await self.store.delete_session(call.body["id"])
        return {"deleted": call.body["id"], "messages": removed}

    @method("session.history", schema=SESSION_HISTORY_SCHEMA)
    async def session_history(self, call: Call) -> dict[str, Any]:
        """The session and its messages, oldest first (the last ``limit`` when given)."""
        session = await self.store.get_session(call.body["id"])
        messages = await self.store.history(call.body["id"], call.body.get("limit"))
        return {"session": session, "messages": messages}

    # -- personas ---------------------------------------------------------------------------------------------
    @method("persona.list", schema=EMPTY_SCHEMA)
    async def persona_list(self, call: Call) -> dict[str, Any]:
        return {"personas": [p.to_dict() for p in await self.store.list_personas()]}

    @method("persona.get", schema=PERSONA_NAME_SCHEMA)
    async def persona_get(self, call: Call) -> dict[str, Any]:
        return (await self.store.get_persona(call.body["name"])).to_dict()

    @method("persona.set", schema=PERSONA_SET_SCHEMA)
    async def persona_set(self, call: Call) -> dict[str, Any]:
        """Create or replace a persona: a system prompt plus sampling defaults for its sessions."""
        b = call.body
        persona = await self.store.set_persona(
            b["name"], b["system_prompt"], b.get("description", ""), b.get("sampling")
        )
        return persona.to_dict()

    @method("persona.delete", schema=PERSONA_NAME_SCHEMA)
    async def persona_delete(self, call: Call) -> dict[str, Any]:
        await self.store.delete_persona(call.body["name"])
        return {"deleted": call.body["name"]}

    # -- chat -------------------------------------------------------------------------------------------------
    @method("chat.send", stream=True, schema=SEND_SCHEMA)
    async def send(self, call: Call) -> dict[str, Any]:
        """Add the user's message to a session (a new one without ``session_id``) and stream the reply.

        Chunks are ``{"text": delta}``; the end is ``{"session_id", "message_id", "user_message_id", "usage"}``.
        """
        b = call.body
        self._require_llm()
        persona = b.get("persona")
        if persona is not None:
            await self.store.get_persona(persona)
        if "session_id" in b:
            session = await self.store.get_session(b["session_id"])
            if persona is not None and persona != session["persona"]:
                await self.store.set_session_persona(session["id"], persona)
                session["persona"] = persona
        else:
            session = await self.store.new_session(_title_from(b["text"]), persona)
        user = await self.store.add_message(session["id"], "user", b["text"])
        self.publish(CHAT_MESSAGE, user)
        end = await self._reply(call, session)
        return {**end, "user_message_id": user["id"]}

    @method("chat.regenerate", stream=True, schema=REGENERATE_SCHEMA)
    async def regenerate(self, call: Call) -> dict[str, Any]:
        """Replace the session's last reply with a new one to the same user message."""
        self._require_llm()
        session = await self.store.get_session(call.body["session_id"])
        history = await self.store.history(session["id"])
        while history and history[-1]["role"] == "assistant":
            await self.store.delete_message(history.pop()["id"])
        if not history or history[-1]["role"] != "user":
            raise BadRequest(f"session {session['id']} has no user message to answer")
        return await self._reply(call, session)

    # -- the reply path ---------------------------------------------------------------------------------------
    def _require_llm(self) -> None:
        if not self.hub.serves("llm.chat"):  # a local backend, or a peer daemon (daemon.modules.peers)
            raise Unavailable("no LLM backend is loaded; load one with `enigma modules load llm`")

    async def _reply(self, call: Call, session: dict[str, Any]) -> dict[str, Any]:
        persona_sampling: dict[str, Any] = {}
        messages: list[dict[str, str]] = []
        if session["persona"]:
            persona = await self.store.get_persona(session["persona"])
            persona_sampling = persona.sampling
            if persona.system_prompt:
                messages.append({"role": "system", "content": persona.system_prompt})
        messages += [
            {"role": m["role"], "content": m["text"]} for m in await self.store.history(session["id"]) if m["text"]
        ]
        # The model serving now, as its last ``llm.state`` event said (no round trip); the reply's usage names
        # the one that answered, which the final write keeps.
        state = self.hub.replay(LLM_STATE, 1)
        model = str(state[-1].body.get("model", "")) if state else None
        row = await self.store.add_message(session["id"], "assistant", "", model=model, complete=False)
        writer = ReplyWriter(self.store, row["id"], self.flush_tokens, self.flush_seconds)
        request = {"messages": messages, **merge_sampling(persona_sampling, pick_sampling(call.body))}

        async def emit(chunk: dict[str, Any]) -> None:
            tokens = chunk.get("tokens")
            await writer.add(chunk.get("text", ""), tokens if isinstance(tokens, int) and tokens >= 0 else 1)
            await call.emit(chunk)

        try:
            end = await self._local(call, "llm.chat", request, emit)
        except asyncio.CancelledError:
            # The client cancelled or vanished: keep what was said, marked incomplete, then let the cancel land.
            await asyncio.shield(self._finish(row["id"], writer, complete=False, finish_reason="cancelled"))
            raise
        except Exception:
            if writer.text:
                await self._finish(row["id"], writer, complete=False, finish_reason="error")
            else:
                await self.store.delete_message(row["id"])
            raise
        usage = end["usage"]
        timings = {k: usage.get(k) for k in ("ttft_ms", "total_ms", "decode_tokens_per_s")}
        await self._finish(
            row["id"],
            writer,
            complete=True,
            finish_reason=usage.get("finish_reason"),
            tokens=usage.get("completion_tokens"),
            timings=timings,
            model=usage.get("model") or None,
        )
        return {"session_id": session["id"], "message_id": row["id"], "usage": usage}

    async def _finish(
        self,
        mid: int,
        writer: ReplyWriter,
        *,
        complete: bool,
        finish_reason: str | None,
        tokens: int | None = None,
        timings: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        await self.store.update_message(
            mid,
            writer.text,
            tokens if tokens is not None else writer.tokens,
            complete=complete,
            timings=timings,
            finish_reason=finish_reason,
            model=model,
        )
        self.publish(CHAT_MESSAGE, await self.store.get_message(mid))

    async def _local(
        self,
        call: Call,
        method: str,
        body: dict[str, Any],
        emit: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Call another daemon method in-process, as the same caller (so its permissions apply)."""
        local = Call(new_id(), method, body, call.caller)
        if emit is not None:
            local.emit = emit
        try:
            return (await self.hub.dispatch(local)).body
        except UnknownMethod as exc:
            raise Unavailable("the LLM backend was unloaded; load one with `enigma modules load llm`") from exc


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:59] + "…"
