"""The states of the bus's connections, one enum per concept, so every transport spells them the same way.

Two concepts, because they answer different questions:

- ``Lifecycle``: has this endpoint been opened, and is it being or has it been closed? The ZeroMQ server and the
  SDK client are opened once and closed once; neither can be reopened.
- ``LinkState``: is a link that reconnects by itself up right now? The MQTT link moves between ``CONNECTING``
  and ``CONNECTED`` for as long as it lives.
"""

from __future__ import annotations

import enum


class Lifecycle(enum.StrEnum):
    NEW = "new"  # built; nothing bound or connected yet
    OPEN = "open"  # serving (server) or usable (client)
    CLOSING = "closing"  # ending in-flight work; accepts nothing new
    CLOSED = "closed"  # every socket closed; final


class LinkState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSING = "closing"
    CLOSED = "closed"
