"""The daemon answers while its modules load: calls to a loading module wait for it, with a limit.

The daemons here run ``tests.daemon.gated_daemon``: its ``gated`` and ``gated_llm`` modules stay in ``load()``
until the test opens their gate (``gate.<name>``), so "still loading" is a state the test holds, not a race.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from bus.envelope import Envelope
from bus.errors import Timeout, UnknownMethod
from tests.conftest import DaemonProcess, StartDaemon
from tests.daemon.fake_modules import GatedLLM
from tests.daemon.gated_daemon import MAIN, wait_module_state
from tests.daemon.raw_client import RawClient


def autoload(*names: str, extra: str = "") -> str:
    return f"[modules]\nautoload = {list(names)!r}\n{extra}"


@pytest.fixture
def start_gated(daemon_factory: StartDaemon) -> Callable[..., DaemonProcess]:
    """A gated test build, returned as soon as it answers (its modules are still loading)."""

    def start(config: str) -> DaemonProcess:
        return daemon_factory(config=config, main=MAIN, loaded=False)

    return start


@asynccontextmanager
async def client(d: DaemonProcess) -> AsyncIterator[RawClient]:
    c = RawClient(d.rpc, d.events)
    try:
        yield c
    finally:
        c.close()


async def send_and_hold(c: RawClient, method: str, body: dict[str, Any] | None = None) -> Envelope:
    """Send ``method`` without waiting for its answer; return once the daemon holds it. A ``sys.status`` sent
    after it on the same connection is read after it, so it must count it in flight."""
    req = Envelope.request(method, body or {})
    await c.send(req)
    assert (await c.call("sys.status"))["inflight"] == 2  # that status, and the request held
    return req


async def wait_held_by(c: RawClient, name: str) -> None:
    """Until a call waits for module ``name`` (``sys.status`` counts them): a request in flight may still be
    on its way to that wait, in a handler that first does other work (``chat.send`` stores the message)."""
    async with asyncio.timeout(10):
        while not any(m["name"] == name and m["waiting"] for m in (await c.call("sys.status"))["loading"]):
            pass


async def answer(c: RawClient, req: Envelope, timeout: float = 30.0) -> list[Envelope]:  # noqa: ASYNC109
    """Every envelope answering ``req``, up to its final reply, end or error."""
    envs = []
    while True:
        env = await c.recv(timeout)
        if env.ref == req.id:
            envs.append(env)
            if env.kind in ("reply", "end", "error"):
                return envs


async def test_ping_status_and_module_list_answer_while_a_module_loads(
    start_gated: Callable[..., DaemonProcess],
) -> None:
    d = start_gated(autoload("gated"))
    async with client(d) as c:
        assert (await c.call("sys.ping"))["pong"] is True
        await wait_module_state(c, "gated", "loading")
        status = await c.call("sys.status")
        assert status["phase"] == "loading"
        [loading] = status["loading"]
        assert (loading["name"], loading["state"], loading["stage"]) == ("gated", "loading", "waiting for the gate")
        assert loading["for"] >= 0
        assert loading["waiting"] == 0
        listed = {m["name"]: m["state"] for m in (await c.call("module.list"))["modules"]}
        assert listed["gated"] == "loading"
        with pytest.raises(UnknownMethod):  # a module nobody is loading: as before, not a wait
            await c.call("echo.say", {"text": "hi"})
        await c.call("gate.gated")
        await c.wait_event("module.state", lambda b: b["name"] == "gated" and b["state"] == "active")
    d.wait_loaded()
    assert d.loaded_line == "enigmad loaded active=gated failed=-"
    async with client(d) as c:
        status = await c.call("sys.status")
    assert (status["phase"], status["loading"]) == ("ready", [])


async def test_a_call_to_a_loading_module_waits_and_runs_once_it_is_active(
    start_gated: Callable[..., DaemonProcess],
) -> None:
    d = start_gated(autoload("gated"))
    async with client(d) as waiting, client(d) as control:
        await wait_module_state(control, "gated", "loading")
        hi = await send_and_hold(waiting, "gated.hi")
        await control.call("gate.gated")
        [reply] = await answer(waiting, hi)
    assert (reply.kind, reply.body) == ("reply", {"hi": True})


async def test_chat_send_during_the_model_load_is_answered_once_the_model_is_up(
    start_gated: Callable[..., DaemonProcess],
) -> None:
    d = start_gated(autoload("gated_llm", "chat"))
    async with client(d) as waiting, client(d) as control:
        await wait_module_state(control, "gated_llm", "loading")
        chat = await send_and_hold(waiting, "chat.send", {"text": "hello?"})
        await wait_held_by(control, "gated_llm")
        await control.call("gate.gated_llm")
        envs = await answer(waiting, chat)
    assert [e.body["text"] for e in envs if e.kind == "chunk"] == list(GatedLLM.REPLY)
    assert envs[-1].kind == "end"
    assert envs[-1].body["usage"]["finish_reason"] == "stop"


async def test_a_load_that_fails_answers_the_waiting_call_with_its_error(
    start_gated: Callable[..., DaemonProcess],
) -> None:
    d = start_gated(autoload("gated"))
    async with client(d) as waiting, client(d) as control:
        await wait_module_state(control, "gated", "loading")
        hi = await send_and_hold(waiting, "gated.hi")
        await control.call("gate.gated", {"fail": "the model file is corrupt"})
        [error] = await answer(waiting, hi)
        assert error.kind == "error"
        assert error.body["code"] == "unavailable"
        assert error.body["message"] == "module 'gated' failed to load: RuntimeError: the model file is corrupt"
        # Once failed, the module's methods are simply not served, and the daemon goes on answering.
        with pytest.raises(UnknownMethod):
            await control.call("gated.hi")
        assert (await control.call("sys.ping"))["pong"] is True
    d.wait_loaded()
    assert d.loaded_line == "enigmad loaded active=- failed=gated"


async def test_chat_send_gets_the_model_load_error(start_gated: Callable[..., DaemonProcess]) -> None:
    d = start_gated(autoload("gated_llm", "chat"))
    async with client(d) as waiting, client(d) as control:
        await wait_module_state(control, "chat", "active")
        await wait_module_state(control, "gated_llm", "loading")
        chat = await send_and_hold(waiting, "chat.send", {"text": "hello?"})
        await wait_held_by(control, "gated_llm")
        await control.call("gate.gated_llm", {"fail": "out of memory"})
        [error] = await answer(waiting, chat)
        assert (await control.call("sys.ping"))["pong"] is True
    assert error.kind == "error"
    assert error.body["code"] == "unavailable"
    assert error.body["message"] == "module 'gated_llm' failed to load: RuntimeError: out of memory"


async def test_a_wait_longer_than_load_wait_is_a_timeout_saying_how_long_it_has_loaded(
    start_gated: Callable[..., DaemonProcess],
) -> None:
    d = start_gated(autoload("gated", extra="[modules.gated]\nload_wait = 0.5\n"))
    async with client(d) as c:
        await wait_module_state(c, "gated", "loading")
        with pytest.raises(Timeout) as caught:
            await c.call("gated.hi")
        err = caught.value
        assert err.message.startswith("module 'gated' is still loading (waiting for the gate) after ")
        assert err.message.endswith(" s; gave up waiting after 0.5 s (modules.gated.load_wait); try again shortly")
        assert err.details["module"] == "gated"
        assert err.details["state"] == "loading"
        assert err.details["waited"] == 0.5
        assert err.details["loading_for"] >= 0.5
        assert (await c.call("sys.ping"))["pong"] is True
        await c.call("gate.gated")
        await wait_module_state(c, "gated", "active")
        assert await c.call("gated.hi") == {"hi": True}


async def test_a_bad_load_wait_stops_the_start_naming_the_key(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config="[modules.echo]\nload_wait = 'soon'\n", wait=False)
    assert d.proc.wait(30) != 0
    assert "modules.echo.load_wait must be a positive number of seconds, got 'soon'" in d.log()


async def test_sigterm_while_a_module_loads_exits_0_promptly(start_gated: Callable[..., DaemonProcess]) -> None:
    d = start_gated(autoload("gated"))
    async with client(d) as waiting, client(d) as control:
        await wait_module_state(control, "gated", "loading")
        hi = await send_and_hold(waiting, "gated.hi")
        d.send_signal(signal.SIGTERM)
        [error] = await answer(waiting, hi)
    assert (error.kind, error.body["code"]) == ("error", "cancelled")
    assert d.stop(timeout=5) == 0
    assert "daemon: stopped" in d.log()


@pytest.mark.model
@pytest.mark.slow
async def test_with_the_real_model_the_bus_answers_at_once_and_chat_waits_for_the_model(
    daemon_factory: StartDaemon,
) -> None:
    config = '[modules]\nautoload = ["llm", "chat"]\n[modules.llm]\ncontext_length = 512\nmax_batch = 2\n'
    d = daemon_factory(config=config, loaded=False)
    async with client(d) as c:
        assert (await c.call("sys.ping"))["pong"] is True
        status = await c.call("sys.status")
        assert status["phase"] == "loading"
        assert "llm" in [m["name"] for m in status["loading"]]
        chat = Envelope.request("chat.send", {"text": "Say hello.", "max_tokens": 4, "temperature": 0})
        await c.send(chat)
        envs = await answer(c, chat, timeout=180)
    assert envs[-1].kind == "end", envs[-1].body
    assert envs[-1].body["usage"]["completion_tokens"] >= 1
    d.wait_loaded(60)
    assert d.loaded_line == "enigmad loaded active=llm,chat failed=-"
