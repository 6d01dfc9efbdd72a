"""Where the daemon listens unless told otherwise, and how clients find it.

Both defaults are loopback: a fresh install exposes nothing to the network, so it needs no keys. Clients
honour ``ENIGMA_RPC``/``ENIGMA_EVENTS`` so a user can point every tool at another daemon in one place.
"""

from __future__ import annotations

import os
from typing import Final

DEFAULT_RPC: Final = "tcp://127.0.0.1:7700"
DEFAULT_EVENTS: Final = "tcp://127.0.0.1:7701"
ENV_RPC: Final = "ENIGMA_RPC"
ENV_EVENTS: Final = "ENIGMA_EVENTS"

# Seconds between ZeroMQ heartbeats and ``sys.heartbeat`` events; a peer silent for 3 intervals is dropped.
DEFAULT_HEARTBEAT: Final = 2.0


def rpc_endpoint(explicit: str | None = None) -> str:
    """The request endpoint: an explicit value, else ``$ENIGMA_RPC``, else the loopback default."""
    return explicit or os.environ.get(ENV_RPC) or DEFAULT_RPC


def events_endpoint(explicit: str | None = None) -> str:
    """The event endpoint: an explicit value, else ``$ENIGMA_EVENTS``, else the loopback default."""
    return explicit or os.environ.get(ENV_EVENTS) or DEFAULT_EVENTS
