"""The ZeroMQ server's event fan-out: hub events through one bounded queue to the XPUB.

The hub calls ``enqueue`` synchronously for every event; one sender task drains the queue onto the XPUB in
bursts of 256, yielding to the loop between bursts so a flood of events never starves request handling. Both
bounds drop rather than grow: the queue drops its oldest event (counted in ``dropped``), and the XPUB drops for
a subscriber whose ``SNDHWM`` is full, so a slow subscriber never grows the daemon's memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import zmq

from bus.envelope import event_map
from bus.errors import BusError
from bus.wire import IdMaker, Packer, Pump

log = logging.getLogger("enigma.bus.zmq")


class EventFanout:
    """Queues hub events and sends them as ``[topic, envelope]`` frames; counts the XPUB's subscriptions."""

    def __init__(self, maxlen: int, ids: IdMaker, packer: Packer) -> None:
        self._ids = ids
        self._packer = packer
        self.queue: deque[tuple[str, dict[str, Any]]] = deque(maxlen=maxlen)
        self._wake = asyncio.Event()
        self.xpub: zmq.Socket | None = None
        self.pump: Pump | None = None  # the XPUB's pump, kicked after each burst of sends
        self.stats = {"errors": 0, "dropped": 0, "subscriptions": 0}

    def enqueue(self, topic: str, body: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.stats["dropped"] += 1
        self.queue.append((topic, body))
        self._wake.set()

    async def run(self) -> None:
        """The sender task: drain whenever something is queued, until cancelled."""
        while True:
            if self.drain(256):
                await asyncio.sleep(0)  # a burst of events must not starve request handling
            else:
                self._wake.clear()
                await self._wake.wait()

    def drain(self, budget: int) -> bool:
        """Send up to ``budget`` queued events; True when some are left."""
        xpub, queue, pack, ids = self.xpub, self.queue, self._packer.pack, self._ids
        if xpub is None:
            return False
        for _ in range(budget):
            if not queue:
                break
            topic, body = queue.popleft()
            m = event_map(ids(), topic, body, time.time())
            try:
                frame = pack(m)
            except BusError as exc:
                self.stats["errors"] += 1
                log.error("event %s cannot be sent: %s", topic, exc.message)
                continue
            try:
                xpub.send_multipart([topic.encode(), frame], zmq.NOBLOCK)
            except zmq.ZMQError:  # XPUB drops rather than blocks; an error here means the socket is closing
                self.stats["dropped"] += 1
        if self.pump is not None:
            self.pump.kick()  # the sends may have eaten the FD's signal for waiting subscriptions
        return bool(queue)

    def on_subscription(self, frames: list[bytes]) -> None:
        """Count subscriptions; reading them also keeps the XPUB from queueing them without bound."""
        msg = frames[0]
        if msg[:1] == b"\x01":
            self.stats["subscriptions"] += 1
        elif msg[:1] == b"\x00":
            self.stats["subscriptions"] = max(0, self.stats["subscriptions"] - 1)
