"""The protocol-v1 envelope and its msgpack codec, with every size bounded.

Everything that comes off a socket goes through ``decode``: it either returns a well-formed ``Envelope`` or
raises ``DecodeError`` carrying the best ``id`` it could salvage, so the transport can answer the sender with
an ``error`` envelope instead of staying silent. Unknown keys are ignored (forward compatibility).

Everything that goes onto a socket is built here too, so no call site spells an envelope key: the ``Envelope``
constructors for code that wants the dataclass, and the ``*_map`` functions for the transports' hot paths,
which pack a plain map (with ``bus.wire.Packer``, or as JSON on MQTT) without a dataclass per message. Both
produce the same keys in the same order, so the bytes are the same either way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgpack

from bus.errors import BadRequest, BusError, TooLarge

VERSION: Final = 1
MAX_FRAME: Final = 4 * 1024 * 1024  # bytes in one encoded envelope
MAX_STR: Final = 1024 * 1024  # characters (bytes) in one string
MAX_BIN: Final = 4 * 1024 * 1024
MAX_ARRAY: Final = 100_000
MAX_MAP: Final = 10_000
MAX_NAME: Final = 128  # method and topic names

Kind = Literal["request", "reply", "error", "chunk", "end", "event", "cancel"]
KINDS: Final[frozenset[str]] = frozenset({"request", "reply", "error", "chunk", "end", "event", "cancel"})
_NEEDS_REF: Final = frozenset({"reply", "error", "chunk", "end", "cancel"})


class DecodeError(BadRequest):
    """A frame that is not a valid envelope. ``salvaged_id`` is set when the sender's id could be read."""

    def __init__(self, message: str, salvaged_id: str | None = None, too_large: bool = False) -> None:
        super().__init__(message)
        self.salvaged_id = salvaged_id
        self.too_large = too_large

    def as_wire_error(self) -> BusError:
        return TooLarge(self.message) if self.too_large else BadRequest(self.message)


def new_id() -> str:
    """A 128-bit random id as 32 hex characters (cheaper than uuid4 and as unique)."""
    return os.urandom(16).hex()


@dataclass(slots=True)
class Envelope:
    kind: str
    id: str = field(default_factory=new_id)
    body: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None
    method: str | None = None
    topic: str | None = None
    seq: int | None = None
    ts: float | None = None
    v: int = VERSION

    def to_map(self) -> dict[str, Any]:
        m: dict[str, Any] = {"v": self.v, "kind": self.kind, "id": self.id, "body": self.body}
        if self.ref is not None:
            m["ref"] = self.ref
        if self.method is not None:
            m["method"] = self.method
        if self.topic is not None:
            m["topic"] = self.topic
        if self.seq is not None:
            m["seq"] = self.seq
        if self.ts is not None:
            m["ts"] = self.ts
        return m

    # Constructors for each kind, so call sites never spell the keys by hand.
    @classmethod
    def request(cls, method: str, body: dict[str, Any] | None = None, id: str | None = None) -> Envelope:
        return cls("request", id or new_id(), body or {}, method=method, ts=time.time())

    @classmethod
    def reply(cls, ref: str, body: dict[str, Any] | None = None) -> Envelope:
        return cls("reply", new_id(), body or {}, ref=ref)

    @classmethod
    def error(cls, ref: str, exc: BusError) -> Envelope:
        return cls("error", new_id(), exc.to_body(), ref=ref)

    @classmethod
    def chunk(cls, ref: str, seq: int, body: dict[str, Any]) -> Envelope:
        return cls("chunk", new_id(), body, ref=ref, seq=seq)

    @classmethod
    def end(cls, ref: str, body: dict[str, Any] | None = None) -> Envelope:
        return cls("end", new_id(), body or {}, ref=ref)

    @classmethod
    def event(cls, topic: str, body: dict[str, Any]) -> Envelope:
        return cls("event", new_id(), body, topic=topic, ts=time.time())

    @classmethod
    def cancel(cls, ref: str) -> Envelope:
        return cls("cancel", new_id(), {}, ref=ref)


# The hot-path builders: the map ``Envelope(...).to_map()`` would give, without the dataclass.
def request_map(id: str, method: str, body: dict[str, Any], ts: float | None = None) -> dict[str, Any]:
    """A ``request`` for ``method``; ``ts`` is the sender's clock, omitted when None."""
    m = {"v": VERSION, "kind": "request", "id": id, "body": body, "method": method}
    if ts is not None:
        m["ts"] = ts
    return m


def answer_map(kind: str, id: str, ref: str, body: dict[str, Any]) -> dict[str, Any]:
    """The closing ``reply`` or ``end`` of request ``ref``."""
    return {"v": VERSION, "kind": kind, "id": id, "body": body, "ref": ref}


def error_map(id: str, ref: str, exc: BusError) -> dict[str, Any]:
    """The ``error`` that answers request ``ref``: ``{code, message, details?}`` from the exception."""
    return {"v": VERSION, "kind": "error", "id": id, "body": exc.to_body(), "ref": ref}


def chunk_map(id: str, ref: str, seq: int, body: dict[str, Any]) -> dict[str, Any]:
    """Piece ``seq`` of the stream that answers request ``ref``."""
    return {"v": VERSION, "kind": "chunk", "id": id, "body": body, "ref": ref, "seq": seq}


def event_map(id: str, topic: str, body: dict[str, Any], ts: float) -> dict[str, Any]:
    """An ``event`` on ``topic``, stamped with the publisher's clock."""
    return {"v": VERSION, "kind": "event", "id": id, "body": body, "topic": topic, "ts": ts}


def cancel_map(id: str, ref: str) -> dict[str, Any]:
    """Stop request ``ref``; never answered by itself."""
    return {"v": VERSION, "kind": "cancel", "id": id, "body": {}, "ref": ref}


def encode(env: Envelope) -> bytes:
    """Encode an envelope; refuses to produce a frame the peer would reject as too large."""
    try:
        data: bytes = msgpack.packb(env.to_map(), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadRequest(f"body is not serialisable: {exc}") from exc
    if len(data) > MAX_FRAME:
        raise TooLarge(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME}")
    return data


def encode_map(m: dict[str, Any]) -> bytes:
    """Encode any map with the same settings (used by tests and raw clients)."""
    return msgpack.packb(m, use_bin_type=True)


def _unpack(frame: bytes) -> Any:
    return msgpack.unpackb(
        frame,
        raw=False,
        strict_map_key=True,
        max_str_len=MAX_STR,
        max_bin_len=MAX_BIN,
        max_array_len=MAX_ARRAY,
        max_map_len=MAX_MAP,
        max_ext_len=0,
    )


def _salvage_id(obj: Any) -> str | None:
    if isinstance(obj, dict):
        i = obj.get("id")
        if isinstance(i, str) and 0 < len(i) <= MAX_NAME:
            return i
    return None


def _type(value: Any) -> str:
    """The wire type of a decoded value, for messages (``nil`` for a missing key too: the peer sees no difference)."""
    return "nil" if value is None else type(value).__name__


def _brief(value: str) -> str:
    """A peer's string quoted for a message, cut short: an error must not echo a megabyte back."""
    return repr(value) if len(value) <= 64 else repr(value[:64]) + "…"


def _name(m: dict[str, Any], key: str, salvaged: str | None) -> str:
    value = m.get(key)
    if not isinstance(value, str) or not value:
        raise DecodeError(f"'{key}' must be a non-empty string", salvaged)
    if len(value) > MAX_NAME:
        raise DecodeError(f"'{key}' is longer than {MAX_NAME} characters", salvaged)
    return value


def decode(frame: bytes) -> Envelope:
    """Decode and validate one frame into an ``Envelope`` or raise ``DecodeError`` — and nothing else.

    Every field's type is checked before the value is used: a list where ``kind`` belongs once reached a set
    lookup and raised ``TypeError``, which no transport answers. ``bool`` is a subclass of ``int`` and
    ``1.0 == 1``, so ``v`` is checked by exact type: ``true`` and ``1.0`` are not version 1.
    """
    if len(frame) > MAX_FRAME:
        raise DecodeError(f"frame of {len(frame)} bytes exceeds the limit of {MAX_FRAME}", too_large=True)
    try:
        obj = _unpack(frame)
    except ValueError as exc:  # msgpack's ExtraData, FormatError, StackError and limit errors are ValueErrors
        raise DecodeError(f"frame is not valid msgpack: {exc}") from None
    except Exception as exc:  # msgpack raises a handful of unrelated types on hostile input
        raise DecodeError(f"frame is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"envelope must be a map, got {type(obj).__name__}")
    sid = _salvage_id(obj)
    if sid is None:
        raise DecodeError(f"'id' must be a non-empty string of at most {MAX_NAME} characters")
    v = obj.get("v")
    if type(v) is not int:
        raise DecodeError(f"'v' must be an integer, got {_type(v)}", sid)
    if v != VERSION:
        raise DecodeError(f"unsupported protocol version {v}; this side speaks {VERSION}", sid)
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise DecodeError(f"'kind' must be a string, got {_type(kind)}", sid)
    if kind not in KINDS:
        raise DecodeError(f"unknown kind {_brief(kind)}", sid)
    body = obj.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise DecodeError(f"'body' must be a map, got {type(body).__name__}", sid)
    ts = obj.get("ts")
    if ts is not None and (not isinstance(ts, int | float) or isinstance(ts, bool)):
        raise DecodeError(f"'ts' must be a number, got {_type(ts)}", sid)
    env = Envelope(kind=kind, id=sid, body=body, ts=None if ts is None else float(ts))
    if kind in _NEEDS_REF:
        env.ref = _name(obj, "ref", sid)
    if kind == "request":
        env.method = _name(obj, "method", sid)
    elif kind == "event":
        env.topic = _name(obj, "topic", sid)
    elif kind == "chunk":
        seq = obj.get("seq")
        if type(seq) is not int or seq < 0:
            raise DecodeError("'seq' must be a non-negative integer", sid)
        env.seq = seq
    return env
