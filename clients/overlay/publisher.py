"""Tells the daemon which game is running: polls a detector source and publishes ``game.state`` on change.

Publishing goes through the daemon's ``bus.publish`` method (role ``device`` suffices), so the event reaches
every subscriber on every transport, and the chat side can pick a game-specific persona from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from clients.overlay.detect import GameDetector, GameState, TitleSource

log = logging.getLogger("enigma.overlay")
GAME_STATE = "game.state"

Publish = Callable[[str, dict[str, Any]], Awaitable[Any]]


class GamePublisher:
    def __init__(self, source: TitleSource, detector: GameDetector, publish: Publish, interval: float = 2.0) -> None:
        self.source = source
        self.detector = detector
        self.publish = publish
        self.interval = interval
        self.last: GameState | None = None

    async def poll_once(self) -> GameState | None:
        """Look once; publish and return the new state if it changed, else None."""
        titles = await asyncio.to_thread(self.source.titles)
        state = self.detector.detect(titles, self.source.name)
        if self.last is not None and state.game == self.last.game:
            return None
        await self.publish(GAME_STATE, state.body())
        self.last = state
        return state

    async def run(self) -> None:
        """Poll forever; a failed publish (daemon away) is retried at the next poll."""
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("game detection or publish failed: %s", exc)
            await asyncio.sleep(self.interval)
