"""The chat screen's state: the sessions list, one open conversation, and the reply being streamed.

Sessions and messages live on the daemon (``session.*``, ``chat.*``); this view model shows them and adds the
reply token by token as ``chat.send`` streams it. ``stop()`` cancels the stream: the daemon keeps the partial
reply marked incomplete. A conversation started here is created with ``session.new`` first, so its id is
known even when the first reply is stopped. ``chat.message`` events keep the open conversation in step with
other devices writing to the same session.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bus.errors import BusError, Cancelled, UnknownMethod
from bus.topics import CHAT_MESSAGE, MODULE_STATE
from clients.app.viewmodels.base import Observable
from clients.app.viewmodels.connection import ConnectionVM
from clients.sdk import Event, Stream

TITLE_CHARS = 60
CHAT_OFF = "chat is off on this daemon: turn on the chat module in Modules"


class _Interrupted(Exception):
    """The daemon restarted while a reply streamed; the request died with the old process."""


@dataclass
class ChatLine:
    """One message on screen; ``streaming`` while its text still grows, ``note`` for usage or why it ended."""

    role: str
    text: str
    id: int | None = None
    complete: bool = True
    streaming: bool = False
    note: str = ""


def _usage_note(usage: dict[str, Any]) -> str:
    parts = []
    if isinstance(usage.get("completion_tokens"), int):
        parts.append(f"{usage['completion_tokens']} tokens")
    if isinstance(usage.get("decode_tokens_per_s"), int | float):
        parts.append(f"{usage['decode_tokens_per_s']:.1f} tok/s")
    if usage.get("finish_reason") == "length":
        parts.append("cut at max tokens")
    return " · ".join(parts)


class ChatVM(Observable):
    """Notifies ``sessions``, ``personas``, ``lines`` (the list changed), ``line`` (its index), ``busy``, ``error``."""

    def __init__(self, conn: ConnectionVM, *, stream_timeout: float = 120.0) -> None:
        super().__init__()
        self.conn = conn
        self.stream_timeout = stream_timeout
        self.sessions: list[dict[str, Any]] = []
        self.personas: list[dict[str, Any]] = []
        self.persona: str | None = None
        self.session_id: str | None = None
        self.title = "New conversation"
        self.lines: list[ChatLine] = []
        self.available = False  # the chat module is loaded on the daemon
        self._stream: Stream | None = None
        self._stopping = False  # the user pressed Stop: a `cancelled` end is then "stopped", not "interrupted"
        self._abort = asyncio.Event()  # set when the daemon restarted under a running stream
        conn.on_event(CHAT_MESSAGE, self._on_message)
        conn.on_event(MODULE_STATE, self._on_module)
        conn.on_online(self._online)

    @property
    def busy(self) -> bool:
        return self._stream is not None

    # -- loading ----------------------------------------------------------------------------------------------
    async def _online(self, restarted: bool) -> None:
        streaming = self._stream is not None
        if restarted and streaming:
            self._abort.set()  # the new daemon never heard of the running request: stop waiting for it
        await self.refresh()
        # A reply that was streaming keeps its own line and note ("interrupted: …"); reloading the history here
        # would race with it and relabel the cut reply as merely "stopped".
        if self.session_id is not None and not streaming and not self.busy:
            await self.open_session(self.session_id)

    async def refresh(self) -> None:
        """Reload sessions and personas; without the chat module both are empty and ``available`` is False."""
        client = self.conn.require()
        try:
            sessions = await client.call("session.list", {"limit": 200})
            personas = await client.call("persona.list")
        except UnknownMethod:
            self.available, self.sessions, self.personas = False, [], []
        except BusError as exc:
            self.set_error(f"cannot list sessions: {exc.message}")
            return
        else:
            self.available = True
            self.sessions, self.personas = sessions["sessions"], personas["personas"]
        self.notify("sessions", self.sessions)
        self.notify("personas", self.personas)

    async def open_session(self, session_id: str) -> None:
        client = self.conn.require()
        try:
            hist = await client.call("session.history", {"id": session_id})
        except BusError as exc:
            self.set_error(exc.message)
            return
        self.session_id = session_id
        self.title = hist["session"].get("title") or "Untitled"
        self.persona = hist["session"].get("persona")
        self.lines = [
            ChatLine(m["role"], m["text"], m["id"], bool(m.get("complete", True)), note=self._stored_note(m))
            for m in hist["messages"]
        ]
        self.notify("lines", self.lines)
        self.notify("persona", self.persona)

    @staticmethod
    def _stored_note(m: dict[str, Any]) -> str:
        if m["role"] != "assistant":
            return ""
        return "stopped" if not m.get("complete", True) else ""

    def new_conversation(self) -> None:
        """Start afresh; the session is created on the daemon with the first message."""
        self.session_id = None
        self.title = "New conversation"
        self.lines = []
        self.notify("lines", self.lines)

    async def delete_session(self, session_id: str) -> None:
        try:
            await self.conn.require().call("session.delete", {"id": session_id})
        except BusError as exc:
            self.set_error(exc.message)
            return
        if session_id == self.session_id:
            self.new_conversation()
        await self.refresh()

    async def rename_session(self, session_id: str, title: str) -> None:
        try:
            await self.conn.require().call("session.rename", {"id": session_id, "title": title[:200]})
        except BusError as exc:
            self.set_error(exc.message)
            return
        if session_id == self.session_id:
            self.title = title[:200]
        await self.refresh()

    def select_persona(self, name: str | None) -> None:
        """The persona for new messages; the daemon stores it on the session with the next send."""
        self.persona = name or None
        self.notify("persona", self.persona)

    def copy_text(self, index: int) -> str:
        """The text of message ``index`` for the clipboard (the UI owns the clipboard itself)."""
        return self.lines[index].text

    # -- sending ----------------------------------------------------------------------------------------------
    async def send(self, text: str, **sampling: Any) -> None:
        """Send ``text`` and stream the reply into a new line; returns when the reply ended (or was stopped)."""
        text = text.strip()
        if not text or self.busy:
            return
        client = self.conn.require()
        if self.session_id is None:
            body: dict[str, Any] = {"title": " ".join(text.split())[:TITLE_CHARS]}
            if self.persona:
                body["persona"] = self.persona
            try:
                session = await client.call("session.new", body)
            except UnknownMethod:
                self.set_error(CHAT_OFF)
                return
            except BusError as exc:
                self.set_error(exc.message)
                return
            self.session_id, self.title = session["id"], session["title"]
            self.notify("title", self.title)
        self.lines.append(ChatLine("user", text))
        self.notify("lines", self.lines)
        request = {"text": text, "session_id": self.session_id, **sampling}
        if self.persona:
            request["persona"] = self.persona
        await self._stream_reply("chat.send", request, self._new_reply_line())

    async def regenerate(self, **sampling: Any) -> None:
        """Replace the last reply with a new one to the same message."""
        if self.busy or self.session_id is None:
            return
        idx = next((i for i in range(len(self.lines) - 1, -1, -1) if self.lines[i].role == "assistant"), None)
        if idx is None or any(line.role == "user" for line in self.lines[idx + 1 :]):
            idx = self._new_reply_line()
        else:
            self.lines[idx] = ChatLine("assistant", "", complete=False, streaming=True)
            self.notify("line", idx)
        await self._stream_reply("chat.regenerate", {"session_id": self.session_id, **sampling}, idx)

    async def stop(self) -> None:
        """Cancel the reply being streamed; what arrived so far stays, marked stopped."""
        if self._stream is not None:
            self._stopping = True
            await self._stream.cancel()

    def _new_reply_line(self) -> int:
        self.lines.append(ChatLine("assistant", "", complete=False, streaming=True))
        self.notify("lines", self.lines)
        return len(self.lines) - 1

    async def _stream_reply(self, method: str, body: dict[str, Any], idx: int) -> None:
        line = self.lines[idx]
        client = self.conn.require()
        self._stream = client.stream(method, body, timeout=self.stream_timeout)
        self._stopping = False
        self._abort.clear()
        self.notify("busy", True)
        try:
            async with self._stream as s:
                while (chunk := await self._next_chunk(s)) is not None:
                    line.text += chunk.get("text", "")
                    self.notify("line", idx)
            end = self._stream.result or {}
            line.id = end.get("message_id", line.id)
            line.complete = True
            line.note = _usage_note(end.get("usage", {}))
        except Cancelled as exc:
            line.complete = False
            line.note = "stopped" if self._stopping else f"interrupted: {exc.message}"
        except _Interrupted:
            line.complete, line.note = False, "interrupted: the daemon restarted"
        except BusError as exc:
            line.complete, line.note = False, f"{exc.code}: {exc.message}"
            self.set_error(exc.message)
        finally:
            line.streaming = False
            self._stream = None
            self.notify("line", idx)
            self.notify("busy", False)
        await self.refresh()

    async def _next_chunk(self, stream: Stream) -> dict[str, Any] | None:
        """The next chunk, None at the end, or ``_Interrupted`` when the daemon restarted meanwhile."""
        nxt: asyncio.Future[Any] = asyncio.ensure_future(stream.__anext__())
        abort: asyncio.Future[Any] = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait({nxt, abort}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abort.cancel()
            if not nxt.done():
                nxt.cancel()
        if not nxt.done() or nxt.cancelled():
            raise _Interrupted
        try:
            chunk: dict[str, Any] = nxt.result()
        except StopAsyncIteration:
            return None
        return chunk

    # -- events -----------------------------------------------------------------------------------------------
    def _on_message(self, ev: Event) -> None:
        """Another device (or this one) stored a message: show it if it belongs to the open conversation."""
        m = ev.body
        if m.get("session_id") != self.session_id or not isinstance(m.get("id"), int):
            return
        for i, line in enumerate(self.lines):
            if line.id == m["id"]:
                if not line.streaming:
                    line.text, line.complete = m.get("text", line.text), bool(m.get("complete", True))
                    self.notify("line", i)
                return
        if m.get("role") == "user":  # our own message, sent before its id was known
            for line in self.lines:
                if line.role == "user" and line.id is None and line.text == m.get("text"):
                    line.id = m["id"]
                    return
        elif any(line.streaming for line in self.lines):
            return  # the reply we are streaming; its id comes with the end of the stream
        self.lines.append(ChatLine(m.get("role", "assistant"), m.get("text", ""), m["id"], m.get("complete", True)))
        self.notify("lines", self.lines)

    def _on_module(self, ev: Event) -> None:
        if ev.body.get("name") == "chat" and ev.body.get("state") in ("active", "unloaded", "failed"):
            self.spawn(self.refresh(), name="enigma-app-chat-refresh")
