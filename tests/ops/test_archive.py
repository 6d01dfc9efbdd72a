"""The archive functions on their own (no daemon): what a live snapshot holds and how files are swapped."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from daemon import backup


def _live_db(path: Path) -> sqlite3.Connection:
    """A database as the daemon keeps it: WAL mode, a connection held open, the newest rows only in the WAL."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.executescript(
        "CREATE TABLE schema_migrations (area TEXT, version INTEGER, applied REAL);"
        "INSERT INTO schema_migrations VALUES ('core', 1, 0), ('future', 3, 0);"
        "CREATE TABLE t (x INTEGER);"
    )
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    return db


def test_snapshot_of_a_live_database_holds_rows_still_in_the_wal(tmp_path: Path) -> None:
    live = _live_db(tmp_path / "live.db")
    assert (tmp_path / "live.db-wal").stat().st_size > 0
    archive, manifest = backup.create_archive(tmp_path / "live.db", {}, tmp_path / "work", node_id="n", version="v")
    live.execute("INSERT INTO t VALUES (100)")  # the writer was never paused
    live.close()

    restorable = backup.validate_archive(archive, tmp_path / "check", known_version=lambda area: 3)
    copy = sqlite3.connect(restorable.db)
    assert copy.execute("SELECT COUNT(*) FROM t").fetchone() == (100,)
    copy.close()
    assert manifest["schema"] == {"core": 1, "future": 3}


def test_area_unknown_to_this_daemon_is_accepted_and_reported_unchecked(tmp_path: Path) -> None:
    _live_db(tmp_path / "live.db").close()
    archive, _ = backup.create_archive(tmp_path / "live.db", {}, tmp_path / "work", node_id="n", version="v")
    known = {"core": 1}
    restorable = backup.validate_archive(archive, tmp_path / "check", known_version=lambda a: known.get(a, 0))
    assert restorable.unchecked == ["future"]
    assert restorable.summary()["unchecked_areas"] == ["future"]


def test_swap_keeps_the_old_database_with_its_wal_folded_in(tmp_path: Path) -> None:
    live = _live_db(tmp_path / "enigma.db")
    # Simulate a daemon killed with rows only in its WAL: copy the three files while the connection is open.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal", "-shm"):
        (crashed / f"enigma.db{suffix}").write_bytes((tmp_path / f"enigma.db{suffix}").read_bytes())
    live.close()
    new = tmp_path / "new.db"
    sqlite3.connect(new).executescript("CREATE TABLE restored (y); INSERT INTO restored VALUES (1);")

    kept = backup.swap_db_files(crashed / "enigma.db", new)

    assert kept == crashed / "enigma.db.before-restore"
    assert not (crashed / "enigma.db-wal").exists()
    old = sqlite3.connect(kept)
    assert old.execute("SELECT COUNT(*) FROM t").fetchone() == (100,)
    old.close()
    restored = sqlite3.connect(crashed / "enigma.db")
    assert restored.execute("SELECT y FROM restored").fetchall() == [(1,)]
    restored.close()


def test_state_files_are_private_and_replaced_ones_kept(tmp_path: Path) -> None:
    src = tmp_path / "allow.src"
    src.write_text('[{"key": "k", "role": "user", "name": "phone"}]')
    dest = tmp_path / "data" / "allow.json"
    dest.parent.mkdir()
    dest.write_text("[]")
    restorable = backup.Restorable(tmp_path, tmp_path / "x.db", {}, {}, {backup.ALLOW_MEMBER: src})

    changed = backup.install_state_files(restorable, {backup.ALLOW_MEMBER: dest})

    assert changed == [backup.ALLOW_MEMBER]
    assert dest.read_text() == src.read_text()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert (tmp_path / "data" / "allow.json.before-restore").read_text() == "[]"
    assert backup.install_state_files(restorable, {backup.ALLOW_MEMBER: dest}) == []  # same content: untouched


def test_snapshot_of_a_missing_database_is_unavailable(tmp_path: Path) -> None:
    from bus.errors import Unavailable

    with pytest.raises(Unavailable, match="there is no database at"):
        backup.snapshot_db(tmp_path / "none.db", tmp_path / "copy.db")


def test_db_in_use_sees_an_open_wal_connection(tmp_path: Path) -> None:
    live = _live_db(tmp_path / "enigma.db")
    assert backup.db_in_use(tmp_path / "enigma.db") is True
    live.close()
    assert backup.db_in_use(tmp_path / "enigma.db") is False


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_restored_files_go_to_the_data_dirs_owner_when_run_as_root(tmp_path: Path) -> None:
    data_dir = tmp_path / "var-lib-enigma"
    data_dir.mkdir()
    os.chown(data_dir, 12345, 12346)
    db = data_dir / "enigma.db"
    db.write_bytes(b"restored")

    backup.match_owner(data_dir, [db, data_dir / "missing.json"])

    assert (db.stat().st_uid, db.stat().st_gid) == (12345, 12346)
