"""The seam between transports and the code that serves requests.

A transport (ZeroMQ server, MQTT bridge, peer link) decodes a frame, works out who is calling (``Caller``),
and hands a ``Call`` to a ``Dispatcher``; it never knows which handlers exist. The daemon's hub implements
``Dispatcher``. Streaming handlers push ``chunk`` bodies through ``Call.emit`` (which applies back-pressure:
it waits while the transport's bounded outbound queue for that client is full) and return the ``end`` body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, Protocol

Role = Literal["admin", "user", "device"]
ROLES: Final[tuple[str, ...]] = ("device", "user", "admin")
ROLE_RANK: Final[dict[str, int]] = {r: i for i, r in enumerate(ROLES)}


def role_allows(role: str, access: str) -> bool:
    """True when a caller with ``role`` may call a method that requires ``access``."""
    return ROLE_RANK.get(role, -1) >= ROLE_RANK.get(access, len(ROLES))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is on the other end: set by the transport from what it authenticated, never from the body."""

    transport: str  # "zmq", "mqtt", "local", "peer"
    peer: str  # a transport-specific id of the connection (ZeroMQ routing id in hex, MQTT client id, …)
    role: str = "admin"
    key: str | None = None  # Z85 CURVE public key, when the transport authenticated one


Emit = Callable[[dict[str, Any]], Awaitable[None]]


async def _no_stream(_body: dict[str, Any]) -> None:
    raise RuntimeError("this call was not made as a stream")


@dataclass(slots=True)
class Call:
    id: str
    method: str
    body: dict[str, Any]
    caller: Caller
    emit: Emit = field(default=_no_stream)


class Result(NamedTuple):
    kind: Literal["reply", "end"]
    body: dict[str, Any]


EventListener = Callable[[str, dict[str, Any]], None]


class Dispatcher(Protocol):
    """What a transport needs from the hub."""

    async def dispatch(self, call: Call) -> Result:
        """Run the handler for ``call.method``; raises ``bus.errors.BusError`` subclasses for failures."""
        ...

    def add_listener(self, prefix: str, listener: EventListener) -> Callable[[], None]:
        """Call ``listener(topic, body)`` for every event whose topic starts with ``prefix``.

        The listener runs on the event loop and must not block (enqueue and return). The return value
        removes the listener.
        """
        ...
