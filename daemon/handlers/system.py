"""``sys.*``: is the daemon there, what is it doing, what can it do."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bus.service import Call, role_allows
from daemon.handlers import Core
from daemon.hub import Hub

EMPTY = {"type": "object"}


def register(hub: Hub, core: Core) -> list[Callable[[], None]]:
    async def ping(call: Call) -> dict[str, Any]:
        """Liveness: ``{"pong": true, "ts", "boot_id", "node_id"}``; any other request fields are echoed back."""
        return {**call.body, "pong": True, "ts": time.time(), "boot_id": core.boot_id, "node_id": core.node_id}

    async def status(call: Call) -> dict[str, Any]:
        """The daemon at a glance: identity, uptime, ``phase`` (``starting``/``loading``/``ready``) and what is
        still ``loading`` (``[{"name", "state", "for", "stage"?}]``), every module's state, endpoints and
        transport figures (``clients``, ``inflight``, ``requests``, ``errors`` … from the ZeroMQ server)."""
        stats: dict[str, Any] = core.server.stats() if core.server is not None else {}
        return {
            "phase": core.phase,
            "loading": core.manager.loading(),
            "node_id": core.node_id,
            "version": core.version,
            "boot_id": core.boot_id,
            "pid": os.getpid(),
            "started": core.started,
            "uptime": core.uptime(),
            "data_dir": str(core.data_dir),
            "modules": core.manager.states(),
            "endpoints": dict(core.server.endpoints) if core.server is not None else {},
            "clients": stats.get("clients", 0),
            "inflight": stats.get("inflight", 0),  # the server counts requests in flight; none before it runs
            "server": stats,
            "caller": {"role": call.caller.role, "transport": call.caller.transport},
        }

    async def methods(call: Call) -> dict[str, Any]:
        """Every registered method: ``{"methods": [{"method", "access", "stream", "summary", "allowed"}]}``;
        ``allowed`` says whether the caller's role may call it."""
        return {
            "methods": [
                {
                    "method": r.method,
                    "access": r.access,
                    "stream": r.stream,
                    "summary": r.summary.splitlines()[0] if r.summary else "",
                    "allowed": role_allows(call.caller.role, r.access),
                }
                for r in hub.methods()
            ]
        }

    return [
        hub.register("sys.ping", ping, access="device", schema=EMPTY),
        hub.register("sys.status", status, access="device", schema=EMPTY),
        hub.register("sys.methods", methods, access="user", schema=EMPTY),
    ]
