"""The daemon's one SQLite file (``enigma.db`` in the data dir), opened through aiosqlite.

WAL mode so readers never wait for the writer, ``synchronous=NORMAL`` (durable at every checkpoint, fast
commits), foreign keys on. Schema changes are migrations: per *area* (``core``, ``chat``, …) an ordered list of
SQL scripts, version N being the N-th script; ``schema_migrations`` records which ran. A module adds its tables
with ``Store.register_migrations("chat", [...])`` followed by ``await store.migrate("chat")`` in its ``load()``.
Lists only ever grow: changing an applied script is refused, and a database written by a newer enigmad (an area
at a version this code does not know) is refused rather than silently misread.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import aiosqlite

log = logging.getLogger("enigma.store")

DB_NAME = "enigma.db"

CORE_MIGRATIONS: list[str] = [
    """
    CREATE TABLE kv (
        key     TEXT PRIMARY KEY,
        value   TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE module_wishes (
        name    TEXT PRIMARY KEY,
        wanted  INTEGER NOT NULL CHECK (wanted IN (0, 1)),
        updated REAL NOT NULL
    );
    """,
]


class StoreError(Exception):
    """The database cannot be used as it is (newer schema, failed migration, changed migration list)."""


class Store:
    """An open ``enigma.db``. Create with ``await Store.open(path)``; finish with ``await close()``."""

    _migrations: ClassVar[dict[str, list[str]]] = {"core": CORE_MIGRATIONS}

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    # -- migrations ---------------------------------------------------------------------------------------
    @classmethod
    def register_migrations(cls, area: str, migrations: list[str]) -> None:
        """Declare the ordered migration scripts of ``area``. Registering again may only append scripts."""
        if not area or not area.replace("_", "").isalnum():
            raise ValueError(f"migration area must be a plain name, got {area!r}")
        old = cls._migrations.get(area, [])
        if list(migrations[: len(old)]) != old:
            raise ValueError(f"migrations for {area!r} may only be appended to, not changed")
        cls._migrations[area] = list(migrations)

    @classmethod
    def known_version(cls, area: str) -> int:
        return len(cls._migrations.get(area, []))

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating if needed) the database at ``path`` — a file, or a directory that gets ``enigma.db``.

        Applies every pending migration of every registered area; raises ``StoreError`` for a newer schema.
        """
        path = Path(path)
        if path.is_dir() or path.suffix != ".db":
            path = path / DB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        store = cls(db, path)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " area TEXT NOT NULL, version INTEGER NOT NULL, applied REAL NOT NULL,"
                " PRIMARY KEY (area, version))"
            )
            for area in list(cls._migrations):
                await store.migrate(area)
        except BaseException:
            await db.close()
            raise
        return store

    async def versions(self) -> dict[str, int]:
        """The schema version of every area recorded in the database."""
        rows = await self.fetchall("SELECT area, MAX(version) AS v FROM schema_migrations GROUP BY area")
        return {r["area"]: r["v"] for r in rows}

    async def migrate(self, area: str) -> int:
        """Apply the pending migrations of ``area`` (each in its own transaction); returns the new version."""
        scripts = self._migrations.get(area)
        if scripts is None:
            raise StoreError(f"no migrations registered for area {area!r}")
        current = (await self.versions()).get(area, 0)
        if current > len(scripts):
            raise StoreError(
                f"{self.path}: the {area!r} schema is at version {current}, but this enigmad knows only up to "
                f"{len(scripts)}; it was written by a newer enigmad — upgrade, or restore a backup"
            )
        for version in range(current + 1, len(scripts) + 1):
            try:
                # One script and its record commit together; area is a checked plain name, version an int.
                record = f"INSERT INTO schema_migrations VALUES ('{area}', {version}, {time.time()})"
                await self._db.executescript(f"BEGIN;\n{scripts[version - 1]};\n{record};\nCOMMIT;")
            except Exception as exc:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise StoreError(f"{self.path}: migration {area} #{version} failed: {exc}") from exc
            log.info("migrated %s to version %d", area, version)
        return len(scripts)

    # -- queries ------------------------------------------------------------------------------------------
    @property
    def db(self) -> aiosqlite.Connection:
        """The connection, for areas with their own queries. It is in autocommit mode: wrap multi-statement
        writes in ``async with store.transaction():``."""
        return self._db

    async def execute(self, sql: str, params: tuple | dict = ()) -> int:
        """Run one statement; returns the number of changed rows."""
        cur = await self._db.execute(sql, params)
        n = cur.rowcount
        await cur.close()
        return n

    async def fetchall(self, sql: str, params: tuple | dict = ()) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: tuple | dict = ()) -> aiosqlite.Row | None:
        async with self._db.execute(sql, params) as cur:
            return await cur.fetchone()

    def transaction(self) -> _Transaction:
        return _Transaction(self._db)

    # -- core tables --------------------------------------------------------------------------------------
    async def get_kv(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM kv WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    async def set_kv(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO kv (key, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (key, value, time.time()),
        )

    async def wishes(self) -> dict[str, bool]:
        """Which modules the user asked for (True) or switched off (False), in the order they were asked."""
        rows = await self.fetchall("SELECT name, wanted FROM module_wishes ORDER BY updated, name")
        return {r["name"]: bool(r["wanted"]) for r in rows}

    async def set_wish(self, name: str, wanted: bool) -> None:
        await self.execute(
            "INSERT INTO module_wishes (name, wanted, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET wanted = excluded.wanted, updated = excluded.updated",
            (name, int(wanted), time.time()),
        )

    # -- closing ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Checkpoint the WAL into the main file and close, so a stopped daemon leaves one self-contained file."""
        try:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._db.execute("PRAGMA optimize")
        finally:
            await self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back when the block raises (or is cancelled)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def __aenter__(self) -> aiosqlite.Connection:
        await self._db.execute("BEGIN IMMEDIATE")
        return self._db

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
