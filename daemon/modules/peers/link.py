"""A link to one paired daemon: a CURVE client that knows at once when the connection drops.

The link calls the peer's ``peers.info`` when it connects and every ``refresh`` seconds, which is how
capabilities (models, load, free memory) and health travel. The SDK client's socket monitor says when the
connection is up or gone; the link turns a drop into an immediate ``unavailable`` for every stream in flight
on it (rather than leaving each to time out), and marks itself down so the router stops choosing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from bus.auth import ClientCurve, KeyPair
from bus.errors import BusError, Unavailable
from clients.sdk import Client
from daemon.modules.peers.store import PeerEntry

log = logging.getLogger("enigma.peers")


class PeerLink:
    """``state`` is ``connecting`` → ``up`` ⇄ ``down``; ``caps`` is what the peer last said about itself."""

    def __init__(
        self,
        peer: PeerEntry,
        keypair: KeyPair,
        *,
        refresh: float = 5.0,
        timeout: float = 60.0,
        on_change: Callable[[PeerLink], None] | None = None,
    ) -> None:
        self.peer = peer
        self.refresh = refresh
        self.state = "connecting"
        self.info: dict[str, Any] = {}
        self.last_seen: float | None = None
        self.error: str | None = None
        self._on_change = on_change
        self._wake = asyncio.Event()
        self.client = Client(
            peer.endpoints["rpc"],
            peer.endpoints.get("events") or None,
            timeout=timeout,
            curve=ClientCurve(peer.key, keypair),
            on_link=self._on_link,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    @property
    def caps(self) -> dict[str, Any]:
        caps = self.info.get("caps")
        return caps if isinstance(caps, dict) else {}

    @property
    def load(self) -> int:
        value = self.caps.get("load", 0)
        return value if isinstance(value, int) else 0

    def models(self) -> list[str]:
        models = self.caps.get("models", [])
        return [m for m in models if isinstance(m, str)] if isinstance(models, list) else []

    async def start(self) -> None:
        await self.client.connect()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name=f"peer-{self.peer.node_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.close()
        self._set("down", "unpaired or shutting down")

    def _on_link(self, up: bool) -> None:
        if not up:
            # The server forgets a request when its client's connection drops, so nothing more will come.
            why = f"the connection to {self.client.rpc} dropped"
            self.client.fail_pending(
                Unavailable(f"the peer daemon went away mid-request: {why}", {"endpoint": self.client.rpc})
            )
            self._set("down", self.client.why_down)
        self._wake.set()  # refresh now: on the way up to learn the capabilities, on the way down to retry

    def _set(self, state: str, error: str | None = None) -> None:
        changed = state != self.state
        self.state, self.error = state, error
        if changed:
            log.info("peer %s is %s%s", self.peer.node_id, state, f" ({error})" if error else "")
            if self._on_change is not None:
                self._on_change(self)

    async def refresh_now(self) -> None:
        """Ask the peer for its capabilities; marks the link up or down by the answer."""
        try:
            info = await self.client.call("peers.info", {}, timeout=max(2.0, self.refresh))
        except BusError as exc:
            self._set("down", exc.message)
            return
        if info.get("node_id") != self.peer.node_id:
            self._set("down", f"the daemon at {self.client.rpc} is {info.get('node_id')!r}, not {self.peer.node_id}")
            return
        self.info = info
        self.last_seen = time.time()
        self._set("up")
        if self._on_change is not None:
            self._on_change(self)

    async def _refresh_loop(self) -> None:
        while True:
            self._wake.clear()
            await self.refresh_now()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh):
                    await self._wake.wait()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.peer.to_dict(),
            "state": self.state,
            "error": self.error,
            "last_seen": self.last_seen,
            "caps": self.caps,
            "version": self.info.get("version", ""),
        }
