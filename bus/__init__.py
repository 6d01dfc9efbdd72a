"""Enigma's bus: the protocol (envelope, codec, errors) and its transports.

Importing this package is cheap and never pulls in torch, the engine or the daemon: a phone app or a robot
depends on it alone.
"""

from bus.errors import BusError, ErrorCode

PROTOCOL_VERSION = 1

__all__ = ["PROTOCOL_VERSION", "BusError", "ErrorCode"]
