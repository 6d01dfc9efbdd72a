"""The wire format of DESIGN.md, spoken by raw pyzmq + msgpack, and everything hostile a peer can send."""

from __future__ import annotations

import asyncio

import msgpack
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.envelope import MAX_FRAME
from tests.bus.conftest import Raw, Rig, pack


async def test_reply_envelope_has_the_design_keys(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    reply = await raw.request("sys.ping", id_="abc123")
    assert reply["v"] == 1
    assert reply["kind"] == "reply"
    assert reply["ref"] == "abc123"
    assert isinstance(reply["id"], str)
    assert reply["id"]
    assert reply["body"] == {"pong": True}


async def test_stream_envelopes_are_chunks_with_seq_then_end(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 1, "kind": "request", "id": "s1", "method": "t.count", "body": {"n": 3}}))
    got = [await raw.recv() for _ in range(4)]
    assert [(m["kind"], m.get("seq"), m["ref"]) for m in got] == [
        ("chunk", 0, "s1"),
        ("chunk", 1, "s1"),
        ("chunk", 2, "s1"),
        ("end", None, "s1"),
    ]
    assert got[-1]["body"] == {"total": 3}


async def test_raw_cancel_envelope_ends_stream_with_cancelled(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 1, "kind": "request", "id": "h1", "method": "t.hang", "body": {}}))
    assert (await raw.recv())["kind"] == "chunk"
    await raw.send(pack({"v": 1, "kind": "cancel", "id": "c1", "ref": "h1", "body": {}}))
    err = await raw.recv()
    assert (err["kind"], err["ref"], err["body"]["code"]) == ("error", "h1", "cancelled")


async def test_garbage_bytes_are_counted_and_the_link_stays_usable(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(b"\xc1\xff garbage")
    assert (await raw.request("sys.ping"))["body"] == {"pong": True}
    assert rig.server.stats()["undecodable"] == 1


async def test_truncated_msgpack_is_counted_and_the_link_stays_usable(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    whole = pack({"v": 1, "kind": "request", "id": "t1", "method": "sys.ping", "body": {}})
    await raw.send(whole[: len(whole) // 2])
    assert (await raw.request("sys.ping", id_="t2"))["ref"] == "t2"
    assert rig.server.stats()["undecodable"] == 1


async def test_field_of_wrong_type_with_readable_id_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 1, "kind": "request", "id": "w1", "method": 42, "body": {}}))
    err = await raw.recv()
    assert (err["kind"], err["ref"], err["body"]["code"]) == ("error", "w1", "bad_request")
    assert err["body"]["message"] == "'method' must be a non-empty string"


async def test_body_that_is_not_a_map_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 1, "kind": "request", "id": "b1", "method": "sys.ping", "body": [1, 2]}))
    err = await raw.recv()
    assert (err["ref"], err["body"]["code"], err["body"]["message"]) == (
        "b1",
        "bad_request",
        "'body' must be a map, got list",
    )


async def test_unknown_kind_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 1, "kind": "shout", "id": "k1", "body": {}}))
    err = await raw.recv()
    assert (err["ref"], err["body"]["code"], err["body"]["message"]) == ("k1", "bad_request", "unknown kind 'shout'")


async def test_reply_kind_sent_to_the_server_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 1, "kind": "reply", "id": "k2", "ref": "x", "body": {}}))
    err = await raw.recv()
    assert (err["ref"], err["body"]["message"]) == ("k2", "kind 'reply' is not accepted on the request socket")


async def test_unsupported_version_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"v": 2, "kind": "request", "id": "v2", "method": "sys.ping", "body": {}}))
    err = await raw.recv()
    assert (err["ref"], err["body"]["code"]) == ("v2", "bad_request")
    assert "unsupported protocol version 2" in err["body"]["message"]


async def test_oversized_frame_gets_too_large_with_its_id(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    big = pack({"v": 1, "kind": "request", "id": "big1", "method": "t.echo", "body": {"blob": b"x" * MAX_FRAME}})
    await raw.send(big)
    err = await raw.recv()
    assert (err["ref"], err["body"]["code"]) == ("big1", "too_large")
    assert (await raw.request("sys.ping", id_="after"))["ref"] == "after"


async def test_frame_beyond_maxmsgsize_drops_only_that_connection(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    hostile, other = Raw(ctx, rig.rpc), Raw(ctx, rig.rpc)
    assert (await other.request("sys.ping", id_="o1"))["ref"] == "o1"
    await hostile.send(b"\x00" * (rig.server.limits.max_msg_size + 1))
    assert (await other.request("sys.ping", id_="o2"))["ref"] == "o2"
    # the hostile DEALER reconnects by itself and is served again
    assert (await hostile.request("sys.ping", id_="h2", body={}))["ref"] == "h2"
    assert rig.server.stats()["undecodable"] == 0  # libzmq refused the frame before it reached the server


async def test_wrong_number_of_frames_with_readable_id_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    env = pack({"v": 1, "kind": "request", "id": "f1", "method": "sys.ping", "body": {}})
    await raw.send(b"extra", b"frames", env)
    err = await raw.recv()
    assert (err["ref"], err["body"]["code"]) == ("f1", "bad_request")
    assert err["body"]["message"] == "expected one envelope frame after the routing id, got 3 frames"


async def test_wrong_number_of_frames_without_id_is_counted(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(b"a", b"b", b"c")
    assert (await raw.request("sys.ping", id_="f2"))["ref"] == "f2"
    assert rig.server.stats()["undecodable"] == 1


async def test_req_socket_with_empty_delimiter_is_answered(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    req = Raw(ctx, rig.rpc, zmq.REQ)
    reply = await req.request("sys.ping", id_="q1")
    assert (reply["kind"], reply["ref"]) == ("reply", "q1")


async def test_event_frames_are_topic_then_envelope(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.connect(rig.events)
    sub.subscribe(b"t.")

    # a subscription travels asynchronously; publish until the first one arrives
    async def publish_until_seen() -> list[bytes]:
        while True:
            rig.hub.publish("t.hello", {"n": 1})
            try:
                return await asyncio.wait_for(sub.recv_multipart(), 0.05)
            except TimeoutError:
                continue

    topic, env = await asyncio.wait_for(publish_until_seen(), 5)
    m = msgpack.unpackb(env, raw=False)
    assert topic == b"t.hello"
    assert (m["v"], m["kind"], m["topic"], m["body"]) == (1, "event", "t.hello", {"n": 1})
    assert isinstance(m["ts"], float)
    sub.close(linger=0)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
_values = st.recursive(
    _scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=10
)
_keys = st.sampled_from(["v", "kind", "id", "ref", "method", "topic", "seq", "body", "ts"]) | st.text(max_size=8)
_maps = st.dictionaries(_keys, _values | st.sampled_from([1, "request", "cancel", "sys.ping", "x1"]), max_size=9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200) | _maps.map(pack), extra=st.lists(st.binary(max_size=8), max_size=2))
async def test_server_stays_responsive_to_arbitrary_frames(
    rig: Rig, ctx: zmq.asyncio.Context, payload: bytes, extra: list[bytes]
) -> None:
    raw = Raw(ctx, rig.rpc)
    try:
        await raw.send(*extra, payload)
        probe = f"probe-{id(payload)}"
        await raw.send(pack({"v": 1, "kind": "request", "id": probe, "method": "sys.ping", "body": {}}))
        while True:  # whatever the junk provoked comes first; the probe must be answered
            m = await raw.recv()
            if m.get("ref") == probe:
                break
        assert m["body"] == {"pong": True}
    finally:
        raw.sock.close(linger=0)
