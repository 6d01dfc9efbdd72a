"""The two things a caller iterates: a request's ``Stream`` of chunks and a ``Subscription`` of events.

Both are fed by the client's reader tasks through a bounded queue. A stream whose consumer falls more than
``max_queue`` chunks behind is cancelled and raises ``Busy``; a subscription drops its oldest events instead
(events are a live view; ``event.replay`` fills gaps) and counts them in ``dropped``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bus.envelope import Envelope
from bus.errors import BusError, Busy, Cancelled, InternalError

if TYPE_CHECKING:
    from clients.sdk.client import Client


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    body: dict[str, Any]
    ts: float | None
    id: str


class Stream:
    """``async with client.stream(method, body) as s: async for chunk in s`` — chunks in ``seq`` order.

    ``result`` holds the ``end`` body once the stream finished. ``cancel()`` asks the server to stop; the
    iteration then raises ``Cancelled`` when the server confirms (or ends normally if it finished first).
    Leaving the ``async with`` block early cancels the request on the server.
    """

    def __init__(
        self, client: Client, method: str, body: dict[str, Any], timeout: float | None, max_queue: int
    ) -> None:
        self._client = client
        self.method = method
        self._body = body
        self._timeout = timeout
        self._max_queue = max_queue
        self.id = ""
        self.result: dict[str, Any] | None = None
        self._queue: deque[Envelope] = deque()
        self._wake = asyncio.Event()
        self._next_seq = 0
        self._started = False
        self._finished = False
        self._cancel_sent = False
        self._overflow = False

    async def start(self) -> Stream:
        if not self._started:
            self._started = True
            self.id = await self._client._start_request(self.method, self._body, self, self._timeout)
        return self

    async def __aenter__(self) -> Stream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._started and not self._finished:
            self._send_cancel()
        self._finish()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if not self._started:
            await self.start()
        while not self._finished:
            if self._overflow:
                self._finish()
                raise Busy(f"{self.method}: more than {self._max_queue} chunks unread; the stream was cancelled")
            if not self._queue:
                await self._client._wait(self._wake, self._timeout, self.method, self._on_timeout)
                self._wake.clear()
                continue
            env = self._queue.popleft()
            if env.kind == "chunk":
                if self._cancel_sent:
                    continue  # already on their way before the server saw the cancel
                if env.seq != self._next_seq:
                    self._send_cancel()
                    self._finish()
                    raise InternalError(f"{self.method}: chunk {env.seq} arrived where {self._next_seq} was due")
                self._next_seq += 1
                return env.body
            self._finish()
            if env.kind in ("end", "reply"):  # a unary method called as a stream: its reply is the result
                self.result = env.body
                break
            if env.kind == "error":
                raise BusError.from_body(env.body)
            raise InternalError(f"{self.method}: unexpected {env.kind!r} in a stream")
        raise StopAsyncIteration

    async def cancel(self) -> None:
        """Ask the server to stop this stream; iteration then raises ``Cancelled``."""
        if self._started and not self._finished:
            self._send_cancel()

    @property
    def done(self) -> bool:
        return self._finished

    # -- fed by the client --------------------------------------------------------------------------------
    def _push(self, env: Envelope) -> None:
        if self._finished:
            return
        if env.kind == "chunk" and len(self._queue) >= self._max_queue:
            self._overflow = True
            self._send_cancel()
        else:
            self._queue.append(env)
        self._wake.set()

    def _on_timeout(self) -> None:
        self._send_cancel()
        self._finish()

    def _send_cancel(self) -> None:
        if not self._cancel_sent and self.id:
            self._cancel_sent = True
            self._client._send_cancel(self.id)

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._client._forget(self.id)

    def _closed(self) -> None:
        """The client closed under us: wake the reader so it sees ``Cancelled``."""
        if not self._finished:
            self._queue.append(Envelope("error", body=Cancelled("the client was closed").to_body()))
            self._wake.set()


class Subscription:
    """``async for ev in client.subscribe("module.")`` — events whose topic starts with the prefix."""

    def __init__(self, client: Client, prefix: str, max_queue: int) -> None:
        self._client = client
        self.prefix = prefix
        self._queue: deque[Event] = deque(maxlen=max_queue)
        self._wake = asyncio.Event()
        self._active = False
        self._closed = False
        self.dropped = 0

    async def _ensure(self) -> None:
        if not self._active and not self._closed:
            self._active = True
            await self._client._add_subscription(self)

    async def __aenter__(self) -> Subscription:
        await self._ensure()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def live(self) -> None:
        """Return once the daemon applies this filter, so no event published from now on is missed.

        ZeroMQ sends a filter to the daemon on its own connection: an event published right after ``subscribe``
        returns (say, by a request sent at once) can reach the daemon before the filter does and be lost to
        this client. Raises ``Timeout`` if the daemon does not confirm within the client's timeout.
        """
        await self._ensure()
        await self._client._until_live()

    async def __anext__(self) -> Event:
        await self._ensure()
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._wake.set()
            if self._active:
                self._client._remove_subscription(self)

    def _push(self, ev: Event) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(ev)
        self._wake.set()

    def _close_from_client(self) -> None:
        self._closed = True
        self._wake.set()
