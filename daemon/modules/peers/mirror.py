"""Mirroring: events from paired daemons re-published here, for the topic prefixes the owner configured.

A phone connected to this daemon then sees, say, the ``robot.`` events of robots attached to another one.
A mirrored event keeps its topic and gains ``"via": <node id of the daemon it came from>``; events that
already carry ``via`` are not mirrored again, so two daemons mirroring each other do not echo forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from bus.errors import BusError
from daemon.modules.peers.link import PeerLink

log = logging.getLogger("enigma.peers")

Publish = Callable[[str, dict[str, Any]], None]


class Mirror:
    """One task per (link, prefix); the SDK subscription re-subscribes by itself across peer restarts."""

    def __init__(self, prefixes: list[str], publish: Publish) -> None:
        self.prefixes = prefixes
        self.publish = publish
        self.mirrored = 0
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}

    def attach(self, link: PeerLink) -> None:
        if not self.prefixes or link.peer.node_id in self._tasks or not link.peer.endpoints.get("events"):
            return
        loop = asyncio.get_running_loop()
        self._tasks[link.peer.node_id] = [
            loop.create_task(self._run(link, p), name=f"mirror-{link.peer.node_id}-{p}") for p in self.prefixes
        ]

    async def detach(self, node_id: str) -> None:
        tasks = self._tasks.pop(node_id, [])
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        for node_id in list(self._tasks):
            await self.detach(node_id)

    async def _run(self, link: PeerLink, prefix: str) -> None:
        origin = link.peer.node_id
        with contextlib.suppress(BusError):
            async with link.client.subscribe(prefix) as sub:
                async for ev in sub:
                    if "via" in ev.body or ev.topic.startswith(("sys.", "module.")):
                        continue
                    self.mirrored += 1
                    self.publish(ev.topic, {**ev.body, "via": origin})
