"""Envelope fields of the wrong type, sent over tcp to a real server: each gets its answer or is counted.

A field's type is checked before its value is used, so no frame reaches a code path that raises: a frame with a
readable ``id`` is answered ``bad_request`` naming the field, a frame without one is counted as ``undecodable``,
and a flood of either leaves the log at most one line, never a traceback per frame.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.envelope import MAX_NAME, DecodeError, decode
from bus.wire import Pump
from tests.bus.conftest import Raw, Rig, pack

_REQUEST: dict[str, Any] = {"v": 1, "kind": "request", "method": "sys.ping", "body": {}}


async def _bad_request(rig: Rig, ctx: zmq.asyncio.Context, **fields: Any) -> str:
    """Send a ping with ``fields`` replaced; return the message of the ``bad_request`` it must get."""
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({**_REQUEST, "id": "x1", **fields}))
    err = await raw.recv()
    assert (err["kind"], err["ref"], err["body"]["code"]) == ("error", "x1", "bad_request")
    assert (await raw.request("sys.ping", id_="after"))["body"] == {"pong": True}
    return str(err["body"]["message"])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ([], "'kind' must be a string, got list"),
        ({"a": 1}, "'kind' must be a string, got dict"),
        (1.5, "'kind' must be a string, got float"),
        (True, "'kind' must be a string, got bool"),
        (None, "'kind' must be a string, got nil"),
        (b"request", "'kind' must be a string, got bytes"),
    ],
)
async def test_kind_of_wrong_type_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context, kind: Any, message: str) -> None:
    assert await _bad_request(rig, ctx, kind=kind) == message
    assert rig.server.stats()["errors"] == 1


async def test_unknown_kind_is_quoted_in_at_most_64_characters(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    assert await _bad_request(rig, ctx, kind="k" * 100_000) == f"unknown kind {'k' * 64!r}…"


@pytest.mark.parametrize(
    ("v", "message"),
    [
        (True, "'v' must be an integer, got bool"),
        (1.0, "'v' must be an integer, got float"),
        ("1", "'v' must be an integer, got str"),
        ([1], "'v' must be an integer, got list"),
        ({"v": 1}, "'v' must be an integer, got dict"),
        (None, "'v' must be an integer, got nil"),
        (0, "unsupported protocol version 0; this side speaks 1"),
    ],
)
async def test_version_that_is_not_the_integer_1_gets_bad_request(
    rig: Rig, ctx: zmq.asyncio.Context, v: Any, message: str
) -> None:
    assert await _bad_request(rig, ctx, v=v) == message


async def test_missing_version_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({"kind": "request", "id": "nv", "method": "sys.ping", "body": {}}))
    err = await raw.recv()
    assert (err["ref"], err["body"]["code"], err["body"]["message"]) == (
        "nv",
        "bad_request",
        "'v' must be an integer, got nil",
    )


@pytest.mark.parametrize(("ts", "name"), [("now", "str"), ([1.0], "list"), (True, "bool"), ({}, "dict")])
async def test_ts_that_is_not_a_number_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context, ts: Any, name: str) -> None:
    assert await _bad_request(rig, ctx, ts=ts) == f"'ts' must be a number, got {name}"


@pytest.mark.parametrize("ts", [1_700_000_000, 1_700_000_000.5, None])
async def test_ts_int_float_or_nil_is_accepted(rig: Rig, ctx: zmq.asyncio.Context, ts: Any) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({**_REQUEST, "id": "t1", "ts": ts}))
    reply = await raw.recv()
    assert (reply["kind"], reply["ref"], reply["body"]) == ("reply", "t1", {"pong": True})


@pytest.mark.parametrize("seq", [True, 1.0, "0", -1, [0]])
async def test_chunk_seq_of_wrong_type_gets_bad_request(rig: Rig, ctx: zmq.asyncio.Context, seq: Any) -> None:
    message = await _bad_request(rig, ctx, kind="chunk", ref="r", seq=seq)
    assert message == "'seq' must be a non-negative integer"


@pytest.mark.parametrize(("field", "value"), [("method", []), ("method", {}), ("ref", 7), ("method", "m" * 129)])
async def test_names_of_wrong_type_or_length_get_bad_request(
    rig: Rig, ctx: zmq.asyncio.Context, field: str, value: Any
) -> None:
    kind = "cancel" if field == "ref" else "request"
    message = await _bad_request(rig, ctx, kind=kind, **{field: value})
    expected = "is longer than 128 characters" if isinstance(value, str) else "must be a non-empty string"
    assert message == f"'{field}' {expected}"


@pytest.mark.parametrize("id_", [7, 1.5, True, None, [], {"a": "b"}, b"abc", "", "i" * (MAX_NAME + 1)])
async def test_frame_whose_id_cannot_be_read_is_counted_not_answered(
    rig: Rig, ctx: zmq.asyncio.Context, id_: Any
) -> None:
    raw = Raw(ctx, rig.rpc)
    await raw.send(pack({**_REQUEST, "id": id_}))
    # Answers on one connection come in order: the probe's reply proves the frame before it was handled unanswered.
    assert (await raw.request("sys.ping", id_="probe"))["ref"] == "probe"
    assert (rig.server.stats()["undecodable"], rig.server.stats()["errors"]) == (1, 0)


async def test_id_of_exactly_128_characters_is_answered(rig: Rig, ctx: zmq.asyncio.Context) -> None:
    raw = Raw(ctx, rig.rpc)
    reply = await raw.request("sys.ping", id_="i" * MAX_NAME)
    assert (reply["kind"], reply["ref"]) == ("reply", "i" * MAX_NAME)


async def test_a_flood_of_wrong_types_is_answered_and_counted_without_a_traceback(
    rig: Rig, ctx: zmq.asyncio.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="enigma")
    raw = Raw(ctx, rig.rpc)
    answered = 0
    for batch in range(10):  # read each batch's answers before the next, so none is dropped at SNDHWM
        for i in range(100):
            await raw.send(pack({**_REQUEST, "id": f"k{batch}-{i}", "kind": [] if i % 2 else {"a": 1}}))
            await raw.send(pack({**_REQUEST, "id": [batch, i]}))
        for _ in range(100):
            err = await raw.recv()
            assert (err["kind"], err["body"]["code"]) == ("error", "bad_request")
            answered += 1
    assert (await raw.request("sys.ping", id_="probe"))["ref"] == "probe"
    stats = rig.server.stats()
    assert (answered, stats["errors"], stats["undecodable"], stats["dropped"]) == (1000, 1000, 1000, 0)
    records = [r for r in caplog.records if r.name.startswith("enigma")]
    assert [r.exc_info for r in records if r.exc_info] == []
    assert [r.getMessage() for r in records] == [
        f"undecodable frame from {records[0].args[0]}: 'id' must be a non-empty string of at most 128 characters"
    ]


_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
_values = st.recursive(
    _scalars | st.binary(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=6,
)
_GOOD: dict[str, Any] = {**_REQUEST, "id": "i", "ref": "r", "seq": 0, "ts": 1.0}
_fields = st.fixed_dictionaries({}, optional={k: _values | st.just(good) for k, good in _GOOD.items()})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=_fields)
def test_decode_raises_nothing_but_decode_error(m: dict[str, Any]) -> None:
    """The property the transports rely on: ``decode`` returns an envelope or raises ``DecodeError``."""
    try:
        env = decode(msgpack.packb(m, use_bin_type=True))
    except DecodeError:
        return
    assert (env.v, env.kind in {"request", "reply", "error", "chunk", "end", "event", "cancel"}) == (1, True)
    assert isinstance(env.id, str)
    assert isinstance(env.body, dict)


async def test_pump_counts_messages_whose_handling_raised_and_logs_one_trace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The safety net under every socket: a handler bug costs a counter, not a traceback per frame."""
    caplog.set_level(logging.DEBUG, logger="enigma")
    c = zmq.Context()
    pull, push = c.socket(zmq.PULL), c.socket(zmq.PUSH)
    pull.bind("inproc://pump")
    push.connect("inproc://pump")
    seen: list[bytes] = []
    done = asyncio.Event()

    def on_message(frames: list[bytes]) -> None:
        seen.append(frames[0])
        if frames[0] == b"last":
            done.set()
        else:
            raise TypeError("unhashable type: 'list'")

    pump = Pump(pull, on_message, name="test")
    try:
        for _ in range(500):
            push.send(b"bad")
        push.send(b"last")
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        pump.close()
        c.destroy(linger=0)
    assert (len(seen), pump.failures) == (501, 500)
    traces = [r for r in caplog.records if r.name.startswith("enigma")]
    assert [(r.getMessage(), r.exc_info is not None) for r in traces] == [("failed to handle a message on test", True)]
