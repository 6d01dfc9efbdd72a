"""Backups of a running daemon, restored live into another: the data comes across, traffic is not stopped.

The chat tests use the ``ollama`` LLM module against the fake Ollama server of the serving tests, so a reply can
be held mid-stream: the backup is then taken "during a busy chat" deterministically, not by luck of timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.sdk import Cancelled, Client, Conflict
from tests.conftest import StartDaemon
from tests.ops.conftest import chat_to_end, edit_db, members, repack, restore, take_backup, upload
from tests.serve.conftest import FakeOllamaThread


def chat_config(url: str) -> str:
    return f"""
[modules]
autoload = ["ollama", "chat"]

[modules.ollama]
url = "{url}"
model = "smollm2:135m"

[modules.chat]
flush_tokens = 1
"""


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[FakeOllamaThread]:
    with FakeOllamaThread() as fake:
        yield fake


async def test_backup_during_busy_chat_restores_same_history(
    daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread, tmp_path: Path
) -> None:
    fake_ollama.configure(hold=False, reply_tokens=["Paris", "."])
    config = chat_config(fake_ollama.url)
    src = daemon_factory(config=config, data_dir=tmp_path / "src")
    async with Client(src.rpc, src.events, timeout=20.0) as c:
        sid = (await chat_to_end(c, {"text": "Capital of France?"}))["session_id"]
        await c.call("module.load", {"name": "echo"})
        fake_ollama.configure(hold=True, reply_tokens=["Rome", " it", " is", "."])
        async with c.stream("chat.send", {"session_id": sid, "text": "And of Italy?"}) as s:
            assert (await s.__anext__())["text"] == "Rome"  # the reply is streaming, the fake holds the rest
            data, end = await take_backup(c)
            during = await c.call("session.history", {"id": sid})
            fake_ollama.release()
            assert [ch["text"] async for ch in s] == [" it", " is", "."]
        after = await c.call("session.history", {"id": sid})
    assert end["manifest"]["schema"] == {"chat": 1, "core": 1}
    assert [(m["role"], m["text"], m["complete"]) for m in during["messages"]] == [
        ("user", "Capital of France?", True),
        ("assistant", "Paris.", True),
        ("user", "And of Italy?", True),
        ("assistant", "Rome", False),
    ]
    assert after["messages"][-1]["text"] == "Rome it is."  # the chat went on while the backup was taken

    fake_ollama.configure(hold=False)
    dst = daemon_factory(config=config, data_dir=tmp_path / "dst")
    async with Client(dst.rpc, dst.events, timeout=20.0) as c:
        result = await restore(c, data)
        restored = await c.call("session.history", {"id": sid})
        states = {m["name"]: m["state"] for m in (await c.call("module.list"))["modules"]}
    assert restored == during
    assert states["echo"] == "active"  # the user's wish came with the backup
    assert result["modules"] == ["chat", "echo", "ollama"]


async def test_newer_chat_schema_is_refused_and_the_chat_history_kept(
    daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread, tmp_path: Path
) -> None:
    fake_ollama.configure(hold=False, reply_tokens=["Paris", "."])
    d = daemon_factory(config=chat_config(fake_ollama.url), data_dir=tmp_path / "d")
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        sid = (await chat_to_end(c, {"text": "Capital of France?"}))["session_id"]
        data, _ = await take_backup(c)
        before = await c.call("session.history", {"id": sid})
        newer = repack(data, lambda f: edit_db(f, tmp_path, "INSERT INTO schema_migrations VALUES ('chat', 2, 0)"))
        with pytest.raises(Conflict, match=r"'chat' schema is at version 2, but this enigmad knows only up to 1"):
            await restore(c, newer)
        assert await c.call("session.history", {"id": sid}) == before
        assert (await chat_to_end(c, {"session_id": sid, "text": "Still there?"}))["session_id"] == sid


async def test_backup_during_stream_keeps_stream_and_restores_wishes_and_node_id(
    daemon_factory: StartDaemon, tmp_path: Path
) -> None:
    src = daemon_factory(data_dir=tmp_path / "src")
    async with Client(src.rpc, src.events, timeout=20.0) as c:
        await c.call("module.load", {"name": "echo"})
        await c.call("module.load", {"name": "system"})
        await c.call("module.unload", {"name": "system"})  # a wish for "off" is data too
        node = (await c.call("sys.status"))["node_id"]
        async with c.stream("echo.count", {"n": 100_000, "delay": 0.02}) as s:
            assert (await s.__anext__()) == {"i": 0}
            data, _ = await take_backup(c)
            assert (await s.__anext__())["i"] >= 1  # still streaming after the backup, without a gap

    dst_dir = tmp_path / "dst"
    dst = daemon_factory(data_dir=dst_dir)
    async with Client(dst.rpc, dst.events, timeout=20.0) as c:
        other_node = (await c.call("sys.status"))["node_id"]
        result = await restore(c, data)
    assert other_node != node
    assert result["restart_needed"] is True  # the restored node id applies from the next start
    assert dst.stop() == 0
    again = daemon_factory(data_dir=dst_dir)
    async with Client(again.rpc, again.events, timeout=20.0) as c:
        status = await c.call("sys.status")
    states = {m["name"]: m["state"] for m in status["modules"]}
    assert status["node_id"] == node
    assert states["echo"] == "active"
    assert states["system"] == "unloaded"
    assert (dst_dir / "enigma.db.before-restore").is_file()


async def test_restore_cancels_requests_in_flight_with_cancelled(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    src = daemon_factory(data_dir=tmp_path / "src")
    async with Client(src.rpc, src.events, timeout=20.0) as c:
        data, _ = await take_backup(c)
        await c.call("module.load", {"name": "echo"})
        async with c.stream("echo.count", {"n": 1000, "delay": 0.05}) as s:
            await s.__anext__()
            restoring = asyncio.ensure_future(restore(c, data))
            with pytest.raises(Cancelled, match="restoring a backup"):
                async for _ in s:
                    pass
            await restoring
        assert (await c.call("sys.ping"))["pong"] is True


async def test_restore_publishes_sys_restored(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    d = daemon_factory(data_dir=tmp_path / "d")
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        data, end = await take_backup(c)
        async with c.subscribe("sys.restored") as sub:
            await sub.live()
            await restore(c, data)
            ev = await asyncio.wait_for(sub.__anext__(), 10)
    assert ev.body["backup"]["node_id"] == end["manifest"]["node_id"]
    assert ev.body["backup"]["schema"] == {"core": 1}


async def test_restore_completes_when_its_requester_gives_up(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    src = daemon_factory(data_dir=tmp_path / "src")
    async with Client(src.rpc, src.events, timeout=20.0) as c:
        await c.call("module.load", {"name": "echo"})
        data, _ = await take_backup(c)
    d = daemon_factory(data_dir=tmp_path / "d")
    async with Client(d.rpc, d.events, timeout=20.0) as watcher, Client(d.rpc, d.events, timeout=20.0) as c:
        async with watcher.subscribe("sys.restored") as sub:
            await sub.live()
            upload_id = await upload(c, data)
            with pytest.raises(TimeoutError):  # the client cancels the request right after sending it
                await asyncio.wait_for(c.call("backup.restore", {"upload_id": upload_id}), 0.001)
            await asyncio.wait_for(sub.__anext__(), 20)
        states = {m["name"]: m["state"] for m in (await watcher.call("module.list"))["modules"]}
    assert states["echo"] == "active"
    assert (tmp_path / "d" / "enigma.db.before-restore").is_file()


async def test_backup_holds_state_files_but_not_model_weights(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    (data_dir / "models" / "tiny").mkdir(parents=True)
    (data_dir / "models" / "tiny" / "tiny.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    (data_dir / "models" / "index.json").write_text('{"version": 1, "models": {"tiny": {"name": "tiny"}}}')
    (data_dir / "allow.json").write_text("[]")
    d = daemon_factory(data_dir=data_dir)
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        data, end = await take_backup(c)
    files = members(data)
    assert sorted(files) == ["enigma.db", "manifest.json", "state/allow.json", "state/models/index.json"]
    assert files["state/models/index.json"] == (data_dir / "models" / "index.json").read_bytes()
    assert sorted(end["manifest"]["files"]) == ["enigma.db", "state/allow.json", "state/models/index.json"]
