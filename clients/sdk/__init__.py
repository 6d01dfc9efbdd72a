"""The client library every Enigma front end uses: ``Client`` (asyncio) and ``SyncClient`` (blocking).

It depends on ``bus`` alone (pyzmq and msgpack), never on torch, the engine or the daemon, so it installs on a
phone or a robot. The error classes are those of ``bus.errors``: a handler's ``NotFound`` is caught here as
``NotFound``.
"""

from bus.auth import ClientCurve, KeyPair
from bus.errors import (
    BadRequest,
    BusError,
    Busy,
    Cancelled,
    Conflict,
    ErrorCode,
    Forbidden,
    InternalError,
    NotFound,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownMethod,
)
from clients.sdk.client import Client
from clients.sdk.streams import Event, Stream, Subscription
from clients.sdk.sync import SyncClient, SyncStream, SyncSubscription

__all__ = [
    "BadRequest",
    "BusError",
    "Busy",
    "Cancelled",
    "Client",
    "ClientCurve",
    "Conflict",
    "ErrorCode",
    "Event",
    "Forbidden",
    "InternalError",
    "KeyPair",
    "NotFound",
    "Stream",
    "Subscription",
    "SyncClient",
    "SyncStream",
    "SyncSubscription",
    "Timeout",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownMethod",
]
