"""Requests, streams, cancellation, timeouts and limits through the real server and the SDK client."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from bus.envelope import Envelope, decode, encode_map
from bus.errors import BadRequest, Busy, Cancelled, InternalError, NotFound, Timeout, Unavailable, UnknownMethod
from bus.zmq_server import ServerLimits
from clients.sdk import Client, SyncClient
from tests.bus.conftest import Probes, Rig, build_hub, make_server


async def test_ping_round_trip(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        assert await c.call("sys.ping") == {"pong": True}


async def test_loopback_caller_without_curve_is_admin(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        assert (await c.call("t.echo", {"x": 1}))["role"] == "admin"


async def test_stream_yields_chunks_in_order_then_end_body_as_result(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.stream("t.count", {"n": 50}) as s:
        chunks = [chunk async for chunk in s]
    assert chunks == [{"i": i} for i in range(50)]
    assert s.result == {"total": 50}


async def test_cancel_ends_stream_with_cancelled_and_cancels_the_handler(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.stream("t.hang") as s:
        assert await s.__anext__() == {"i": 0}
        await s.cancel()
        with pytest.raises(Cancelled, match="cancelled by the client"):
            await s.__anext__()
    await asyncio.wait_for(rig.probes.cancelled.wait(), 5)


async def test_leaving_a_stream_early_cancels_the_handler(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        async with c.stream("t.hang") as s:
            await s.__anext__()
        await asyncio.wait_for(rig.probes.cancelled.wait(), 5)
        assert await c.call("sys.ping") == {"pong": True}


async def test_call_without_answer_in_time_raises_timeout_and_cancels_the_handler(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(Timeout, match=r"t\.slow: no answer within 0\.3 s"):
            await c.call("t.slow", timeout=0.3)
        await asyncio.wait_for(rig.probes.cancelled.wait(), 5)


async def test_call_to_absent_daemon_raises_unavailable_naming_the_endpoint() -> None:
    ctx = zmq.asyncio.Context()
    probe = ctx.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # the port is free and nothing listens there
    ctx.term()
    endpoint = f"tcp://127.0.0.1:{port}"
    async with Client(endpoint, endpoint, timeout=0.3) as c:
        with pytest.raises(Unavailable, match=rf"no answer from {endpoint} \(is enigmad running\?\)"):
            await c.call("sys.ping")


async def test_unknown_method_is_answered_unknown_method(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(UnknownMethod, match=r"unknown method 'no\.such'"):
            await c.call("no.such")
        assert await c.call("sys.ping") == {"pong": True}


async def test_body_of_wrong_type_is_bad_request_naming_the_field(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(BadRequest, match=r"t\.echo: x: 'one' is not of type 'integer'") as ei:
            await c.call("t.echo", {"x": "one"})
        assert ei.value.details == {"field": "x"}


async def test_handler_crash_is_internal_and_the_server_still_answers(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(InternalError, match=r"t\.fail failed: ValueError: boom"):
            await c.call("t.fail")
        assert await c.call("sys.ping") == {"pong": True}


async def test_handler_error_keeps_its_class_across_the_wire(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(NotFound, match="no such thing: x"):
            await c.call("t.missing")


async def test_flood_from_one_client_gets_busy_while_another_is_served(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as flooder, Client(rig.rpc, rig.events, timeout=5) as other:
        calls = [asyncio.ensure_future(flooder.call("t.slow")) for _ in range(12)]  # limit is 8 per client
        pending = set(calls)
        async with asyncio.timeout(5):
            while len(calls) - len(pending) < 4:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        done = [t for t in calls if t.done()]
        busy = [t.exception() for t in done]
        assert len(busy) == 4
        assert all(isinstance(e, Busy) for e in busy)
        assert "limit 8 per client" in str(busy[0])
        assert await other.call("sys.ping") == {"pong": True}
        rig.probes.release.set()
        results = await asyncio.gather(*(t for t in calls if t not in done))
        assert results == [{"released": True}] * 8
    assert rig.server.stats()["busy"] == 4


async def test_client_that_vanishes_mid_stream_has_its_handler_cancelled(rig: Rig) -> None:
    c = Client(rig.rpc, rig.events, timeout=5)
    await c.connect()
    s = await c.stream("t.hang").start()
    assert await s.__anext__() == {"i": 0}
    c._destroy()  # the process dies: its socket closes without sending cancel
    await asyncio.wait_for(rig.probes.cancelled.wait(), 5)
    assert rig.server.stats()["vanished"] == 1
    assert rig.server.stats()["inflight"] == 0


async def test_close_ends_an_inflight_stream_with_cancelled() -> None:
    probes = Probes()
    server = make_server(build_hub(probes))
    await server.start()
    async with Client(server.endpoints["rpc"], server.endpoints["events"], timeout=5) as c, c.stream("t.hang") as s:
        await s.__anext__()
        await server.close(timeout=2)
        with pytest.raises(Cancelled, match="the server is shutting down"):
            await s.__anext__()
    assert probes.cancelled.is_set()


async def test_streaming_method_called_as_unary_is_refused(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(BadRequest, match=r"t\.count is a streaming method: use Client\.stream\(\)"):
            await c.call("t.count", {"n": 2})


async def test_unary_method_called_as_stream_gives_its_reply_as_result(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.stream("sys.ping") as s:
        assert [chunk async for chunk in s] == []
    assert s.result == {"pong": True}


async def test_stream_error_raises_on_iteration(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.stream("no.such") as s:
        with pytest.raises(UnknownMethod):
            await s.__anext__()


async def test_chunk_that_cannot_be_encoded_ends_the_stream_with_internal(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.stream("t.bad_chunk") as s:
        with pytest.raises(InternalError, match=r"t\.bad_chunk emitted a chunk that cannot be sent"):
            await s.__anext__()


async def test_request_over_frame_limit_is_refused_locally(rig: Rig) -> None:
    from bus.errors import TooLarge

    async with Client(rig.rpc, rig.events, timeout=5) as c:
        with pytest.raises(TooLarge, match="exceeds the limit"):
            await c.call("t.echo", {"blob": b"x" * (5 * 1024 * 1024)})


async def test_slow_stream_consumer_applies_back_pressure_to_the_handler() -> None:
    """With tiny pipes and big chunks the handler waits in emit instead of queueing; nothing is dropped."""
    probes = Probes()
    server = make_server(build_hub(probes), limits=ServerLimits(sndhwm=4))
    await server.start()
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.rcvhwm = 4
    dealer.connect(server.endpoints["rpc"])

    async def answer() -> Envelope:
        while True:  # skip the heartbeat probes the server sends to clients with work in flight
            env = decode(await asyncio.wait_for(dealer.recv(), 5))
            if env.kind != "event":
                return env

    try:
        req = {"v": 1, "kind": "request", "id": "bp1", "method": "t.count", "body": {"n": 300, "pad": 65536}}
        await dealer.send(encode_map(req))
        first = await answer()
        assert first.kind == "chunk"
        assert server.stats()["inflight"] == 1  # 300 x 64 KiB cannot all be queued: the handler is parked
        seqs = [first.seq]
        while (env := await answer()).kind == "chunk":
            seqs.append(env.seq)
        assert env.kind == "end"
        assert seqs == list(range(300))
    finally:
        dealer.close(linger=0)
        ctx.term()
        await server.close(timeout=2)


async def test_sync_client_calls_and_streams(rig: Rig) -> None:
    def work() -> tuple[dict, list, dict | None]:  # blocking code, in a thread so the server's loop runs on
        with SyncClient(rig.rpc, rig.events, timeout=5) as sc:
            pong = sc.call("sys.ping")
            with sc.stream("t.count", {"n": 3}) as st:
                chunks = list(st)
            return pong, chunks, st.result

    pong, chunks, result = await asyncio.to_thread(work)
    assert pong == {"pong": True}
    assert chunks == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert result == {"total": 3}


async def test_sync_client_raises_the_wire_error(rig: Rig) -> None:
    def work() -> None:
        with SyncClient(rig.rpc, rig.events, timeout=5) as sc:
            sc.call("no.such")

    with pytest.raises(UnknownMethod, match=r"unknown method 'no\.such'"):
        await asyncio.to_thread(work)
