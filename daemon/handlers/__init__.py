"""The daemon's core request handlers, one module per area (``sys``, ``module``, ``bus``/``event``).

Each area module has a ``register(hub, core)`` that registers its handlers with their access role and a JSON
schema for the body (so a wrong type is a ``bad_request`` naming the field before the handler runs) and
returns the unregister functions. ``Core`` is what the handlers may read about the running daemon; the only
thing they may *do* to it is ``Core.live.restore`` (``daemon.services.LiveRestore``). Handlers never import
``daemon.app`` (``tests/test_layering.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.hub import Hub
from daemon.manager import ModuleManager
from daemon.services import LiveRestore


@dataclass
class Core:
    """The running daemon as the handlers see it. ``server`` is set once the transport is up."""

    hub: Hub
    manager: ModuleManager
    node_id: str
    boot_id: str
    version: str
    data_dir: Path
    started: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    server: Any = None  # bus.zmq_server.ZmqServer: .endpoints, .stats()
    # "starting" (store and hub coming up) → "loading" (serving; modules still loading in the background) →
    # "ready" (every module a start loads is active or failed). Set by daemon.app.
    phase: str = "starting"
    live: LiveRestore | None = None  # set by daemon.app once the store is open: what backup.* copies and swaps

    def uptime(self) -> float:
        return time.monotonic() - self.started_mono


def register_all(hub: Hub, core: Core) -> list[Callable[[], None]]:
    """Register every core handler; returns their unregister functions."""
    from daemon.handlers import backup, events, modules, system

    return [
        *system.register(hub, core),
        *modules.register(hub, core),
        *events.register(hub, core),
        *backup.register(hub, core),
    ]
