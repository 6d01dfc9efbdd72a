"""The daemon through the SDK every client uses: calls, typed errors, events, streams and cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from clients.sdk import Cancelled, Client, NotFound, Timeout
from tests.conftest import DaemonProcess


@pytest.fixture
def daemon(fresh_shared_daemon: DaemonProcess) -> DaemonProcess:
    """The module's shared daemon: these tests only call it, and each finds every module unloaded."""
    return fresh_shared_daemon


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[Client]:
    async with Client(daemon.rpc, daemon.events, timeout=10.0) as c:
        yield c


async def test_sdk_call_returns_the_reply_body(daemon: DaemonProcess, client: Client) -> None:
    body = await client.call("sys.ping")
    assert body["pong"] is True
    assert (await client.call("sys.status"))["endpoints"]["rpc"] == daemon.rpc


async def test_sdk_raises_the_typed_error_of_the_handler(client: Client) -> None:
    with pytest.raises(NotFound, match=r"no module named 'nope'"):
        await client.call("module.load", {"name": "nope"})
    with pytest.raises(NotFound, match=r"no module named .ghost."):
        await client.call("module.unload", {"name": "ghost"})


async def test_sdk_subscriber_sees_every_module_state_of_a_load(client: Client) -> None:
    async with client.subscribe("") as sub:
        await sub.live()
        await client.call("module.load", {"name": "echo"})
        states = []
        async with asyncio.timeout(10):
            async for ev in sub:
                if ev.topic == "module.state":
                    states.append(ev.body["state"])
                    if ev.body["state"] == "active":
                        break
    assert states == ["loading", "loaded", "active"]


async def test_sdk_live_subscription_sees_an_event_published_right_after(daemon: DaemonProcess) -> None:
    async with Client(daemon.rpc, daemon.events, timeout=10.0) as c, c.subscribe("test.right-after") as sub:
        await sub.live()
        await c.call("bus.publish", {"topic": "test.right-after", "body": {"n": 1}})
        ev = await asyncio.wait_for(anext(sub), 10)
    assert (ev.topic, ev.body) == ("test.right-after", {"n": 1})


async def test_sdk_live_times_out_when_no_events_arrive(daemon: DaemonProcess, unused_tcp_port: int) -> None:
    nowhere = f"tcp://127.0.0.1:{unused_tcp_port}"  # requests reach the daemon, events come from nowhere
    async with Client(daemon.rpc, nowhere, timeout=0.5) as c, c.subscribe("test.") as sub:
        with pytest.raises(Timeout, match=rf"no events from {nowhere} within 0.5 s: the subscription is not live"):
            await sub.live()


async def test_sdk_stream_yields_chunks_and_the_end_body(client: Client) -> None:
    await client.call("module.load", {"name": "echo"})
    async with client.stream("echo.count", {"n": 4}) as s:
        chunks = [c["i"] async for c in s]
    assert chunks == [0, 1, 2, 3]
    assert s.result == {"count": 4}


async def test_sdk_cancel_ends_a_stream_with_cancelled(client: Client) -> None:
    await client.call("module.load", {"name": "echo"})
    seen = 0

    async def read_and_cancel_after_two() -> None:
        nonlocal seen
        async with client.stream("echo.count", {"n": 10_000, "delay": 0.01}) as s:
            async for _ in s:
                seen += 1
                if seen == 2:
                    await s.cancel()

    with pytest.raises(Cancelled):
        await read_and_cancel_after_two()
    assert seen < 10_000
    assert (await client.call("sys.ping"))["pong"] is True
