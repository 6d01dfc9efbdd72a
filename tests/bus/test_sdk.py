"""SDK behaviour that is the client's own: endpoints, per-chunk timeouts, bounded queues, closed clients."""

from __future__ import annotations

import asyncio
import socket

import pytest

from bus.defaults import DEFAULT_EVENTS, DEFAULT_RPC, events_endpoint, rpc_endpoint
from bus.errors import Busy, Timeout, Unavailable
from clients.sdk import Client, SyncClient
from tests.bus.conftest import Probes, Rig, build_hub, make_server


def test_endpoints_come_from_argument_then_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENIGMA_RPC", raising=False)
    monkeypatch.delenv("ENIGMA_EVENTS", raising=False)
    assert (rpc_endpoint(), events_endpoint()) == (DEFAULT_RPC, DEFAULT_EVENTS)
    monkeypatch.setenv("ENIGMA_RPC", "tcp://127.0.0.1:9000")
    monkeypatch.setenv("ENIGMA_EVENTS", "tcp://127.0.0.1:9001")
    assert (rpc_endpoint(), events_endpoint()) == ("tcp://127.0.0.1:9000", "tcp://127.0.0.1:9001")
    assert rpc_endpoint("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"
    assert Client().rpc == "tcp://127.0.0.1:9000"


async def test_stream_silent_longer_than_its_timeout_raises_timeout_and_cancels(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.stream("t.hang", timeout=0.3) as s:
        assert await s.__anext__() == {"i": 0}
        with pytest.raises(Timeout, match=r"t\.hang: no answer within 0\.3 s"):
            await s.__anext__()
    await asyncio.wait_for(rig.probes.cancelled.wait(), 5)


async def test_stream_consumer_that_falls_behind_gets_busy(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5, max_stream_queue=5) as c, c.stream("t.count", {"n": 50}) as s:
        async with asyncio.timeout(5):
            while not s._overflow:  # wait, event-driven, until the reader has queued more than 5 chunks
                await s._wake.wait()
                s._wake.clear()
        with pytest.raises(Busy, match=r"t\.count: more than 5 chunks unread; the stream was cancelled"):
            await s.__anext__()


async def test_call_on_a_closed_client_raises_unavailable(rig: Rig) -> None:
    c = Client(rig.rpc, rig.events, timeout=5)
    async with c:
        pass
    with pytest.raises(Unavailable, match="is closed"):
        await c.call("sys.ping")


async def test_closing_the_client_ends_its_subscriptions(rig: Rig) -> None:
    c = Client(rig.rpc, rig.events, timeout=5)
    await c.connect()
    sub = c.subscribe("x.")
    await sub.__aenter__()
    await c.close()
    with pytest.raises(StopAsyncIteration):
        await sub.__anext__()


async def test_sync_client_subscribes(rig: Rig) -> None:
    def work() -> str:
        with SyncClient(rig.rpc, rig.events, timeout=5) as sc, sc.subscribe("sys.heartbeat") as beats:
            return beats.next(timeout=5).body["boot_id"]

    assert await asyncio.to_thread(work) == "boot-1"


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


async def test_request_that_timed_out_while_daemon_was_down_never_runs_later() -> None:
    rpc = free_endpoint()
    async with Client(rpc, rpc, timeout=0.3) as c:
        with pytest.raises(Unavailable, match="connection refused"):
            await c.call("t.echo", {"x": 1})
        server = make_server(build_hub(Probes()), rpc=rpc)
        await server.start()
        try:
            assert await c.call("sys.ping", timeout=5) == {"pong": True}
            assert server.stats()["requests"] == 1  # only the ping: the withdrawn echo never arrived
        finally:
            await server.close(timeout=2)


async def test_request_sent_while_daemon_starts_is_answered_once_it_is_up() -> None:
    rpc = free_endpoint()
    async with Client(rpc, rpc, timeout=5) as c:
        call = asyncio.ensure_future(c.call("sys.ping"))
        await asyncio.sleep(0)  # the request is queued on the socket now; the daemon is not there yet
        assert not call.done()
        server = make_server(build_hub(Probes()), rpc=rpc)
        await server.start()
        try:
            assert await call == {"pong": True}
        finally:
            await server.close(timeout=2)


async def test_wait_connected_is_false_while_no_daemon_listens() -> None:
    rpc = free_endpoint()
    async with Client(rpc, rpc) as c:
        assert await c.wait_connected(0.3) is False
        assert not c.connected


async def test_on_link_is_told_when_the_connection_comes_up_and_when_it_drops() -> None:
    server = make_server(build_hub(Probes()))
    await server.start()
    changes: list[bool] = []
    why: list[str] = []
    dropped = asyncio.Event()

    def on_link(up: bool) -> None:
        changes.append(up)
        if not up:
            why.append(c.why_down)
            dropped.set()

    try:
        async with Client(server.endpoints["rpc"], on_link=on_link) as c:
            assert await c.wait_connected(5)
            await server.close(timeout=2)
            async with asyncio.timeout(5):
                await dropped.wait()
            assert changes == [True, False]
            assert why == ["the connection dropped"]
    finally:
        await server.close(timeout=2)


async def test_fail_pending_ends_a_stream_in_flight_with_the_given_error(rig: Rig) -> None:
    async with Client(rig.rpc, timeout=10) as c, c.stream("t.hang") as s:
        assert await anext(s) == {"i": 0}
        c.fail_pending(Unavailable("the daemon went away"))
        with pytest.raises(Unavailable, match="the daemon went away"):
            await anext(s)
