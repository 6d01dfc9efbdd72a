"""``enigmad restore FILE``: the path for a stopped daemon, which must refuse while one runs on the data dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.sdk import Client
from tests.conftest import StartDaemon, run_enigmad
from tests.ops.conftest import take_backup


async def _backup_with_echo(daemon_factory: StartDaemon, data_dir: Path, out: Path) -> str:
    d = daemon_factory(data_dir=data_dir)
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        await c.call("module.load", {"name": "echo"})
        data, end = await take_backup(c)
    await asyncio.to_thread(out.write_bytes, data)
    assert d.stop() == 0
    return str(end["manifest"]["node_id"])


async def test_offline_restore_fills_a_stopped_data_dir(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    node = await _backup_with_echo(daemon_factory, tmp_path / "src", archive)
    target = tmp_path / "dst"
    first = daemon_factory(data_dir=target)  # a daemon that ran here before, with its own node id
    assert first.stop() == 0

    done = run_enigmad(tmp_path, "restore", "--data-dir", str(target), str(archive))

    assert done.returncode == 0, done.stderr
    assert f"restored the backup of node {node}" in done.stdout
    assert (target / "enigma.db.before-restore").is_file()
    d = daemon_factory(data_dir=target)
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        status = await c.call("sys.status")
    assert status["node_id"] == node
    assert {m["name"]: m["state"] for m in status["modules"]}["echo"] == "active"


async def test_offline_restore_refuses_while_a_daemon_runs(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    await _backup_with_echo(daemon_factory, tmp_path / "src", archive)
    running = daemon_factory(data_dir=tmp_path / "live")
    before = running.db_path.read_bytes()

    done = run_enigmad(tmp_path, "restore", "--data-dir", str(running.data_dir), str(archive))

    assert done.returncode == 1
    assert "a daemon is running on" in done.stderr
    assert "enigma backup restore FILE" in done.stderr
    assert not (running.data_dir / "enigma.db.before-restore").exists()
    assert running.db_path.read_bytes() == before
    async with Client(running.rpc, running.events, timeout=20.0) as c:
        assert (await c.call("sys.ping"))["pong"] is True


def test_offline_restore_refuses_a_truncated_archive(tmp_path: Path) -> None:
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 20)

    done = run_enigmad(tmp_path, "restore", "--data-dir", str(tmp_path / "d"), str(archive))

    assert done.returncode == 1
    assert "refusing to restore" in done.stderr
    assert "the backup archive is corrupt or truncated" in done.stderr
    assert done.stderr.rstrip().endswith("(bad_request)")
    assert not (tmp_path / "d" / "enigma.db").exists()


def test_offline_restore_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    done = run_enigmad(tmp_path, "restore", "--data-dir", str(tmp_path / "d"), str(tmp_path / "nope.tar.gz"))

    assert done.returncode == 2
    assert "no backup file at" in done.stderr
