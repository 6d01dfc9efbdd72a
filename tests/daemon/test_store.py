"""The store: WAL and pragmas, per-area migrations, refusal of newer schemas, clean close."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.store import Store, StoreError


@pytest.fixture(autouse=True)
def isolated_migrations() -> Iterator[None]:
    """Areas registered by a test vanish after it, as they would in a fresh process."""
    saved = dict(Store._migrations)
    yield
    Store._migrations.clear()
    Store._migrations.update(saved)


async def test_open_uses_wal_normal_sync_and_foreign_keys(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        assert store.path == tmp_path / "enigma.db"
        assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"
        assert (await store.fetchone("PRAGMA synchronous"))[0] == 1  # NORMAL
        assert (await store.fetchone("PRAGMA foreign_keys"))[0] == 1
    finally:
        await store.close()


async def test_core_migration_is_recorded(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        assert (await store.versions())["core"] == Store.known_version("core") == 1
    finally:
        await store.close()


async def test_module_migrations_apply_in_order_once(tmp_path: Path) -> None:
    Store.register_migrations("notes", ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)"])
    store = await Store.open(tmp_path)
    await store.execute("INSERT INTO notes (text) VALUES ('kept')")
    await store.close()
    Store.register_migrations(
        "notes", ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)", "ALTER TABLE notes ADD COLUMN tag TEXT"]
    )
    store = await Store.open(tmp_path)
    try:
        assert (await store.versions())["notes"] == 2
        row = await store.fetchone("SELECT text, tag FROM notes")
        assert (row["text"], row["tag"]) == ("kept", None)
    finally:
        await store.close()


async def test_migrate_adds_an_area_to_an_open_store(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        Store.register_migrations("late", ["CREATE TABLE late (x INTEGER)"])
        assert await store.migrate("late") == 1
        assert await store.execute("INSERT INTO late VALUES (1)") == 1
    finally:
        await store.close()


async def test_newer_schema_is_refused_with_both_versions(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    await store.execute("INSERT INTO schema_migrations VALUES ('core', 7, 0)")
    await store.close()
    with pytest.raises(StoreError, match=r"'core' schema is at version 7, but this enigmad knows only up to 1"):
        await Store.open(tmp_path)


async def test_failed_migration_rolls_back_and_is_not_recorded(tmp_path: Path) -> None:
    Store.register_migrations("bad", ["CREATE TABLE half (x INTEGER); CREATE TABLE oops (;"])
    with pytest.raises(StoreError, match=r"migration bad #1 failed"):
        await Store.open(tmp_path)
    db = sqlite3.connect(tmp_path / "enigma.db")
    try:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
        assert db.execute("SELECT * FROM schema_migrations WHERE area = 'bad'").fetchall() == []
    finally:
        db.close()


def test_changing_an_applied_migration_is_refused() -> None:
    Store.register_migrations("fixed", ["CREATE TABLE a (x)"])
    with pytest.raises(ValueError, match="may only be appended to"):
        Store.register_migrations("fixed", ["CREATE TABLE b (x)"])


async def test_close_checkpoints_the_wal(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    for i in range(50):
        await store.set_kv(f"k{i}", "v" * 100)
    assert (tmp_path / "enigma.db-wal").exists()
    await store.close()
    wal = tmp_path / "enigma.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    db = sqlite3.connect(tmp_path / "enigma.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == 50
    finally:
        db.close()


async def test_kv_and_wishes_round_trip(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        assert await store.get_kv("node_id") is None
        await store.set_kv("node_id", "a")
        await store.set_kv("node_id", "b")
        assert await store.get_kv("node_id") == "b"
        await store.set_wish("echo", True)
        await store.set_wish("system", False)
        await store.set_wish("echo", False)
        assert await store.wishes() == {"system": False, "echo": False}
    finally:
        await store.close()


async def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:

        async def insert_then_fail() -> None:
            async with store.transaction() as db:
                await db.execute("INSERT INTO kv VALUES ('x', 'y', 0)")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await insert_then_fail()
        assert await store.get_kv("x") is None
    finally:
        await store.close()
