"""The chat view model against a real daemon (the real default model where the reply matters): streaming, stop,
regenerate, and a daemon that goes away mid-reply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.sdk import Client
from tests.app.conftest import Views, ollama_config
from tests.app.waiting import wait_until
from tests.conftest import DaemonProcess, StartDaemon
from tests.mqtt.broker import free_port
from tests.serve.conftest import FakeOllamaThread


@pytest.mark.model
async def test_reply_streams_into_the_conversation_chunk_by_chunk(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    await wait_until(views.chat, lambda: views.chat.available, what="chat module seen")
    growth: list[str] = []
    views.chat.bind(lambda what, i: growth.append(views.chat.lines[i].text) if what == "line" else None)
    await views.chat.send("What is the capital of France?")
    user, reply = views.chat.lines
    assert (user.role, user.text) == ("user", "What is the capital of France?")
    assert reply.role == "assistant"
    assert reply.complete
    assert not reply.streaming
    assert "Paris" in reply.text
    assert len({g for g in growth if g}) > 2  # the text grew in several steps while streaming
    assert reply.note.startswith("24 tokens") or "tokens" in reply.note
    # the conversation is on the daemon: the session list and its history show it
    assert views.chat.session_id in [s["id"] for s in views.chat.sessions]
    async with Client(model_daemon.rpc, model_daemon.events) as c:
        hist = await c.call("session.history", {"id": views.chat.session_id})
    assert [m["text"] for m in hist["messages"]] == [user.text, reply.text]
    assert reply.id == hist["messages"][1]["id"]


@pytest.mark.model
async def test_stop_cancels_the_stream_and_keeps_the_partial_reply(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    first_text = asyncio.Event()

    def on_change(what: str, i: object) -> None:
        if what == "line" and isinstance(i, int) and views.chat.lines[i].text:
            first_text.set()

    views.chat.bind(on_change)
    sending = asyncio.create_task(views.chat.send("Write a long story about a dragon.", max_tokens=2000))
    async with asyncio.timeout(60):
        await first_text.wait()
    await views.chat.stop()
    await asyncio.wait_for(sending, 30)
    reply = views.chat.lines[-1]
    assert (reply.note, reply.complete, reply.streaming) == ("stopped", False, False)
    assert not views.chat.busy
    async with Client(model_daemon.rpc, model_daemon.events) as c:
        hist = await c.call("session.history", {"id": views.chat.session_id})
    stored = hist["messages"][-1]
    assert stored["role"] == "assistant"
    assert stored["complete"] is False
    assert stored["text"].startswith(reply.text[:10])


@pytest.mark.model
async def test_regenerate_replaces_the_last_reply(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    await views.chat.send("Say hello.")
    assert len(views.chat.lines) == 2
    await views.chat.regenerate(temperature=1.0, seed=7)
    assert len(views.chat.lines) == 2
    reply = views.chat.lines[1]
    assert reply.complete
    assert reply.text
    async with Client(model_daemon.rpc, model_daemon.events) as c:
        hist = await c.call("session.history", {"id": views.chat.session_id})
    assert [m["text"] for m in hist["messages"]] == ["Say hello.", reply.text]


@pytest.mark.model
async def test_reopening_a_session_shows_its_history(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    await views.chat.send("Name a colour.")
    sid, lines = views.chat.session_id, [(x.role, x.text) for x in views.chat.lines]
    views.chat.new_conversation()
    assert views.chat.lines == []
    await views.chat.open_session(sid)  # type: ignore[arg-type]
    assert [(x.role, x.text) for x in views.chat.lines] == lines


@pytest.mark.model
async def test_persona_is_applied_to_new_sessions(views: Views, model_daemon: DaemonProcess) -> None:
    await views.connect(model_daemon)
    async with Client(model_daemon.rpc, model_daemon.events) as c:
        await c.call(
            "persona.set", {"name": "pirate", "system_prompt": "You are a pirate.", "sampling": {"max_tokens": 4}}
        )
    await views.chat.refresh()
    assert "pirate" in [p["name"] for p in views.chat.personas]
    views.chat.select_persona("pirate")
    await views.chat.send("Hi")
    session = next(s for s in views.chat.sessions if s["id"] == views.chat.session_id)
    assert session["persona"] == "pirate"


@pytest.mark.model
async def test_message_from_another_device_appears_in_the_open_conversation(
    views: Views, model_daemon: DaemonProcess
) -> None:
    await views.connect(model_daemon)
    await views.chat.send("One")
    async with (
        Client(model_daemon.rpc, model_daemon.events) as c,
        c.stream("chat.send", {"session_id": views.chat.session_id, "text": "Two", "max_tokens": 3}) as s,
    ):
        async for _ in s:
            pass
    await wait_until(views.chat, lambda: len(views.chat.lines) == 4, what="the other device's turn")
    assert [x.role for x in views.chat.lines] == ["user", "assistant", "user", "assistant"]
    assert views.chat.lines[2].text == "Two"


async def test_send_without_the_chat_module_shows_the_error(views: Views, daemon: DaemonProcess) -> None:
    await views.connect(daemon)
    await views.chat.send("hello?")
    assert views.chat.error == "chat is off on this daemon: turn on the chat module in Modules"
    assert views.chat.lines == []


async def test_daemon_stopping_mid_reply_marks_it_interrupted(
    views: Views, daemon_factory: StartDaemon, held_ollama: FakeOllamaThread
) -> None:
    daemon = daemon_factory(config=ollama_config(held_ollama.url))
    await views.connect(daemon)
    first_text = asyncio.Event()
    views.chat.bind(lambda what, i: first_text.set() if what == "line" and views.chat.lines[i].text else None)
    sending = asyncio.create_task(views.chat.send("Write a long story about a dragon.", max_tokens=2000))
    async with asyncio.timeout(60):
        await first_text.wait()
    await asyncio.to_thread(daemon.stop)
    await asyncio.wait_for(sending, 30)
    reply = views.chat.lines[-1]
    assert (reply.note, reply.complete) == ("interrupted: the server is shutting down", False)
    assert reply.text


async def test_daemon_killed_mid_reply_is_noticed_when_it_comes_back(
    views: Views, daemon_factory: StartDaemon, held_ollama: FakeOllamaThread, tmp_path: Path
) -> None:
    rpc, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    flags = ("--rpc", rpc, "--events", events)
    start = {"loopback_ports": False, "data_dir": tmp_path / "d", "config": ollama_config(held_ollama.url)}
    daemon = daemon_factory(*flags, **start)
    await views.connect(daemon)
    first_text = asyncio.Event()
    views.chat.bind(lambda what, i: first_text.set() if what == "line" and views.chat.lines[i].text else None)
    sending = asyncio.create_task(views.chat.send("Write a long story about a dragon.", max_tokens=2000))
    async with asyncio.timeout(60):
        await first_text.wait()
    daemon.kill()  # no goodbye: the stream just goes quiet
    await asyncio.to_thread(daemon_factory, *flags, **start)
    await asyncio.wait_for(sending, 60)
    reply = views.chat.lines[-1]
    assert (reply.note, reply.complete) == ("interrupted: the daemon restarted", False)
    assert views.conn.restarts == 1
