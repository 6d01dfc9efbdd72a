"""Sessions, messages and personas in the daemon's SQLite file.

The write pattern is what makes a crash harmless: a user message is committed before generation starts; the
assistant's reply is inserted as soon as generation starts with ``complete = 0``, its text updated as it grows,
and only the last update sets ``complete = 1``. A SIGKILL at any moment therefore leaves the conversation as it
was said, with the interrupted reply marked incomplete.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Final

import aiosqlite

from bus.errors import Conflict, NotFound
from daemon.store import Store

MIGRATIONS: Final[list[str]] = [
    """
    CREATE TABLE chat_personas (
        name TEXT PRIMARY KEY,
        system_prompt TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        sampling TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE chat_sessions (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        persona TEXT,
        model TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE chat_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        text TEXT NOT NULL,
        tokens INTEGER NOT NULL DEFAULT 0,
        model TEXT,
        timings TEXT NOT NULL DEFAULT '{}',
        finish_reason TEXT,
        complete INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE INDEX chat_messages_by_session ON chat_messages(session_id, id);
    """,
]

_SESSION_COLS: Final = "s.id, s.title, s.persona, s.model, s.created, s.updated"
_MESSAGE_COLS: Final = "id, session_id, role, text, tokens, model, timings, finish_reason, complete, created, updated"


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    system_prompt: str
    description: str
    sampling: dict[str, Any]
    created: float
    updated: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "system_prompt": self.system_prompt,
            "description": self.description,
            "sampling": self.sampling,
            "created": self.created,
            "updated": self.updated,
        }


def new_session_id() -> str:
    return os.urandom(6).hex()


def _message(row: aiosqlite.Row | tuple[Any, ...]) -> dict[str, Any]:
    (mid, sid, role, text, tokens, model, timings, finish, complete, created, updated) = tuple(row)
    return {
        "id": mid,
        "session_id": sid,
        "role": role,
        "text": text,
        "tokens": tokens,
        "model": model,
        "timings": json.loads(timings or "{}"),
        "finish_reason": finish,
        "complete": bool(complete),
        "created": created,
        "updated": updated,
    }


def _session(row: aiosqlite.Row | tuple[Any, ...], count: int | None = None) -> dict[str, Any]:
    sid, title, persona, model, created, updated = tuple(row)[:6]
    out: dict[str, Any] = {
        "id": sid,
        "title": title,
        "persona": persona,
        "model": model,
        "created": created,
        "updated": updated,
    }
    if count is not None:
        out["messages"] = count
    return out


class ChatStore:
    """Data access for the chat tables over the daemon's shared aiosqlite connection."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.db = store.db

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        async with self.db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        async with self.db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement (the connection autocommits); returns lastrowid (inserts) or rowcount."""
        async with self.db.execute(sql, args) as cur:
            result = cur.lastrowid if sql.lstrip().upper().startswith("INSERT") else cur.rowcount
        return int(result or 0)

    # -- sessions -------------------------------------------------------------------------------------------
    async def new_session(
        self, title: str = "", persona: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        now = time.time()
        sid = new_session_id()
        await self._write(
            "INSERT INTO chat_sessions (id, title, persona, model, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
            (sid, title, persona, model, now, now),
        )
        return {"id": sid, "title": title, "persona": persona, "model": model, "created": now, "updated": now}

    async def get_session(self, sid: str) -> dict[str, Any]:
        row = await self._one(
            f"SELECT {_SESSION_COLS}, (SELECT COUNT(*) FROM chat_messages m WHERE m.session_id = s.id) "
            "FROM chat_sessions s WHERE s.id = ?",
            (sid,),
        )
        if row is None:
            raise NotFound(f"no such session: {sid}")
        return _session(row, row[6])

    async def list_sessions(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        rows = await self._all(
            f"SELECT {_SESSION_COLS}, (SELECT COUNT(*) FROM chat_messages m WHERE m.session_id = s.id) "
            "FROM chat_sessions s ORDER BY s.updated DESC, s.rowid DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_session(r, r[6]) for r in rows]

    async def rename_session(self, sid: str, title: str) -> dict[str, Any]:
        if not await self._write(
            "UPDATE chat_sessions SET title = ?, updated = ? WHERE id = ?", (title, time.time(), sid)
        ):
            raise NotFound(f"no such session: {sid}")
        return await self.get_session(sid)

    async def set_session_persona(self, sid: str, persona: str | None) -> None:
        if not await self._write(
            "UPDATE chat_sessions SET persona = ?, updated = ? WHERE id = ?", (persona, time.time(), sid)
        ):
            raise NotFound(f"no such session: {sid}")

    async def delete_session(self, sid: str) -> int:
        """Delete a session and its messages; returns how many messages went with it."""
        async with self.store.transaction() as db:
            async with db.execute("DELETE FROM chat_messages WHERE session_id = ?", (sid,)) as cur:
                removed = cur.rowcount
            async with db.execute("DELETE FROM chat_sessions WHERE id = ?", (sid,)) as cur:
                found = cur.rowcount
        if not found:
            raise NotFound(f"no such session: {sid}")
        return int(removed)

    async def touch_session(self, sid: str) -> None:
        await self._write("UPDATE chat_sessions SET updated = ? WHERE id = ?", (time.time(), sid))

    # -- messages -------------------------------------------------------------------------------------------
    async def add_message(
        self,
        sid: str,
        role: str,
        text: str,
        *,
        tokens: int = 0,
        model: str | None = None,
        complete: bool = True,
        timings: dict[str, Any] | None = None,
        finish_reason: str | None = None,
    ) -> dict[str, Any]:
        now = time.time()
        mid = await self._write(
            "INSERT INTO chat_messages (session_id, role, text, tokens, model, timings, finish_reason, complete, "
            "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sid, role, text, tokens, model, json.dumps(timings or {}), finish_reason, int(complete), now, now),
        )
        await self._write("UPDATE chat_sessions SET updated = ? WHERE id = ?", (now, sid))
        return await self.get_message(mid)

    async def update_message(
        self,
        mid: int,
        text: str,
        tokens: int,
        *,
        complete: bool = False,
        timings: dict[str, Any] | None = None,
        finish_reason: str | None = None,
        model: str | None = None,
    ) -> None:
        """Rewrite a growing message; ``timings``, ``finish_reason`` and ``model`` are kept unless given."""
        await self._write(
            "UPDATE chat_messages SET text = ?, tokens = ?, complete = ?, timings = COALESCE(?, timings), "
            "finish_reason = COALESCE(?, finish_reason), model = COALESCE(?, model), updated = ? WHERE id = ?",
            (
                text,
                tokens,
                int(complete),
                None if timings is None else json.dumps(timings),
                finish_reason,
                model,
                time.time(),
                mid,
            ),
        )

    async def get_message(self, mid: int) -> dict[str, Any]:
        row = await self._one(f"SELECT {_MESSAGE_COLS} FROM chat_messages WHERE id = ?", (mid,))
        if row is None:
            raise NotFound(f"no such message: {mid}")
        return _message(row)

    async def history(self, sid: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Messages of a session, oldest first (the last ``limit`` when given)."""
        await self.get_session(sid)
        if limit is None:
            rows = await self._all(
                f"SELECT {_MESSAGE_COLS} FROM chat_messages WHERE session_id = ? ORDER BY id", (sid,)
            )
        else:
            rows = await self._all(
                f"SELECT * FROM (SELECT {_MESSAGE_COLS} FROM chat_messages WHERE session_id = ? "
                "ORDER BY id DESC LIMIT ?) ORDER BY id",
                (sid, limit),
            )
        return [_message(r) for r in rows]

    async def delete_message(self, mid: int) -> None:
        await self._write("DELETE FROM chat_messages WHERE id = ?", (mid,))

    # -- personas -------------------------------------------------------------------------------------------
    async def set_persona(
        self, name: str, system_prompt: str, description: str = "", sampling: dict[str, Any] | None = None
    ) -> Persona:
        now = time.time()
        await self._write(
            "INSERT INTO chat_personas (name, system_prompt, description, sampling, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET system_prompt = excluded.system_prompt, "
            "description = excluded.description, sampling = excluded.sampling, updated = excluded.updated",
            (name, system_prompt, description, json.dumps(sampling or {}), now, now),
        )
        return await self.get_persona(name)

    async def get_persona(self, name: str) -> Persona:
        row = await self._one(
            "SELECT name, system_prompt, description, sampling, created, updated FROM chat_personas WHERE name = ?",
            (name,),
        )
        if row is None:
            raise NotFound(f"no such persona: {name}")
        return Persona(row[0], row[1], row[2], json.loads(row[3] or "{}"), row[4], row[5])

    async def list_personas(self) -> list[Persona]:
        rows = await self._all(
            "SELECT name, system_prompt, description, sampling, created, updated FROM chat_personas ORDER BY name"
        )
        return [Persona(r[0], r[1], r[2], json.loads(r[3] or "{}"), r[4], r[5]) for r in rows]

    async def delete_persona(self, name: str) -> None:
        row = await self._one("SELECT COUNT(*) FROM chat_sessions WHERE persona = ?", (name,))
        if row and row[0]:
            raise Conflict(f"persona {name!r} is used by {row[0]} session(s); delete or re-assign them first")
        if not await self._write("DELETE FROM chat_personas WHERE name = ?", (name,)):
            raise NotFound(f"no such persona: {name}")
