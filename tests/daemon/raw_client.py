"""A deliberately minimal ZeroMQ client built from pyzmq and the envelope codec alone.

The daemon's integration tests speak the wire protocol through this rather than through the SDK, so a bug in
the SDK cannot hide (or fake) a bug in the daemon.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio

from bus.envelope import Envelope, decode, encode
from bus.errors import BusError


class RawClient:
    def __init__(self, rpc: str, events: str | None = None, curve: dict[str, bytes] | None = None) -> None:
        self.ctx = zmq.asyncio.Context()
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        self.sub: zmq.asyncio.Socket | None = None
        self._curve = curve
        if curve:
            self._apply_curve(self.dealer)
        self.dealer.connect(rpc)
        self._events = events

    def _apply_curve(self, sock: zmq.asyncio.Socket) -> None:
        assert self._curve is not None
        sock.curve_serverkey = self._curve["server"]
        sock.curve_publickey = self._curve["public"]
        sock.curve_secretkey = self._curve["secret"]

    async def subscribe(self, prefix: str) -> None:
        """Subscribe and wait until the subscription is live (a published probe event comes back)."""
        assert self._events is not None
        if self.sub is None:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.linger = 0
            if self._curve:
                self._apply_curve(self.sub)
            self.sub.connect(self._events)
        self.sub.subscribe(prefix.encode())
        self.sub.subscribe(b"test.probe")
        async with asyncio.timeout(10):
            while True:
                await self.call("bus.publish", {"topic": "test.probe", "body": {}})
                try:
                    async with asyncio.timeout(0.2):
                        while True:
                            topic, _ = await self.next_event()
                            if topic == "test.probe":
                                self.sub.unsubscribe(b"test.probe")
                                return
                except TimeoutError:
                    continue

    async def next_event(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:  # noqa: ASYNC109
        assert self.sub is not None
        async with asyncio.timeout(timeout):
            topic, frame = await self.sub.recv_multipart()
        env = decode(frame)
        assert env.kind == "event"
        assert env.topic == topic.decode()
        return env.topic, env.body

    async def wait_event(self, topic: str, pred: Any = None, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event on ``topic`` whose body satisfies ``pred``; other events are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                t, body = await self.next_event(timeout)
                if t == topic and (pred is None or pred(body)):
                    return body

    async def send(self, env: Envelope) -> None:
        await self.dealer.send(encode(env))

    async def recv(self, timeout: float = 10.0) -> Envelope:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while True:
                env = decode(await self.dealer.recv())
                if env.kind != "event":  # heartbeats never come on the dealer, but be strict about kinds
                    return env

    async def call(self, method: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        req = Envelope.request(method, body or {})
        await self.send(req)
        while True:
            env = await self.recv(timeout)
            if env.ref != req.id:
                continue
            if env.kind == "error":
                raise BusError.from_body(env.body)
            assert env.kind == "reply", env
            return env.body

    async def stream(self, method: str, body: dict[str, Any], timeout: float = 10.0) -> AsyncIterator[Envelope]:  # noqa: ASYNC109
        """Yield every answer envelope (chunks, then the final end/error) for one streaming request."""
        req = Envelope.request(method, body)
        self.last_request_id = req.id
        await self.send(req)
        while True:
            env = await self.recv(timeout)
            if env.ref != req.id:
                continue
            yield env
            if env.kind in ("end", "error", "reply"):
                return

    async def cancel(self, ref: str) -> None:
        await self.send(Envelope.cancel(ref))

    def close(self) -> None:
        self.dealer.close(0)
        if self.sub is not None:
            self.sub.close(0)
        self.ctx.term()
