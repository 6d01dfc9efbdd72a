"""Turn what a user types into the two endpoints of a daemon.

People type ``192.168.1.20``, ``pi.local:7700`` or paste ``tcp://host:7700``; the daemon's event socket is,
by default, the request port plus one, so one address is enough. Two endpoints separated by a space or a
comma are taken as given.
"""

from __future__ import annotations

import re

from bus.defaults import DEFAULT_RPC
from bus.errors import BadRequest

DEFAULT_PORT = int(DEFAULT_RPC.rsplit(":", 1)[1])
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")


def _endpoint(text: str, default_port: int | None) -> tuple[str, int]:
    """``(host, port)`` from ``tcp://host:port``, ``host:port`` or ``host``."""
    rest = text.removeprefix("tcp://")
    if "://" in rest:
        raise BadRequest(f"only tcp:// addresses are supported, got {text!r}")
    if rest.startswith("["):  # [::1]:7700
        host, _, port_text = rest.partition("]")
        host += "]"
        port_text = port_text.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not _HOST.match(host):
        raise BadRequest(f"{text!r} is not a host name or address")
    if not port_text:
        if default_port is None:
            raise BadRequest(f"{text!r} needs a port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65535:
        raise BadRequest(f"port {port_text!r} in {text!r} must be a number from 1 to 65534")
    return host, int(port_text)


def parse_address(text: str) -> tuple[str, str]:
    """``(rpc, events)`` endpoints for an address as a user types it; ``BadRequest`` says what is wrong."""
    parts = [p for p in re.split(r"[\s,]+", text.strip()) if p]
    if not parts:
        raise BadRequest("enter the daemon's address, e.g. 192.168.1.20 or pi.local:7700")
    if len(parts) > 2:
        raise BadRequest(f"expected one address or two endpoints, got {len(parts)} parts")
    host, port = _endpoint(parts[0], DEFAULT_PORT)
    if len(parts) == 2:
        ev_host, ev_port = _endpoint(parts[1], None)
        return f"tcp://{host}:{port}", f"tcp://{ev_host}:{ev_port}"
    return f"tcp://{host}:{port}", f"tcp://{host}:{port + 1}"
