"""A blocking face on the async client, for scripts, the REPL and programs that have no event loop.

It runs one ``Client`` on a private event loop in a daemon thread and waits on its results; an interrupt
(Ctrl-C) while waiting cancels the request on the server too. Everything behaves as in ``Client``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from bus.auth import ClientCurve
from bus.defaults import DEFAULT_HEARTBEAT
from clients.sdk.client import Client
from clients.sdk.streams import Event, Stream, Subscription

T = TypeVar("T")


class SyncClient:
    def __init__(
        self,
        rpc: str | None = None,
        events: str | None = None,
        timeout: float = 30.0,
        *,
        curve: ClientCurve | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="enigma-sdk-loop", daemon=True)
        self._thread.start()
        self._client = Client(rpc, events, timeout=timeout, curve=curve, heartbeat=heartbeat)
        self._closed = False
        try:
            self._run(self._client.connect())
        except BaseException:
            self._stop_loop()
            raise

    @property
    def client(self) -> Client:
        return self._client

    @property
    def boot_id(self) -> str | None:
        return self._client.boot_id

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this SyncClient is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise
        except BaseException:
            fut.cancel()  # e.g. KeyboardInterrupt: the coroutine's cancellation tells the server
            raise

    def call(self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict[str, Any]:
        return self._run(self._client.call(method, body, timeout=timeout))

    def stream(self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> SyncStream:
        async def make() -> Stream:
            return await self._client.stream(method, body, timeout=timeout).start()

        return SyncStream(self, self._run(make()))

    def subscribe(self, prefix: str = "") -> SyncSubscription:
        async def make() -> Subscription:
            return await self._client.subscribe(prefix).__aenter__()

        return SyncSubscription(self, self._run(make()))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncStream(Iterator[dict[str, Any]]):
    """Iterate for chunk bodies; ``result`` is the ``end`` body afterwards. Closing early cancels."""

    def __init__(self, owner: SyncClient, stream: Stream) -> None:
        self._owner = owner
        self._stream = stream

    @property
    def result(self) -> dict[str, Any] | None:
        return self._stream.result

    def __next__(self) -> dict[str, Any]:
        try:
            return self._owner._run(self._stream.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def cancel(self) -> None:
        self._owner._run(self._stream.cancel())

    def close(self) -> None:
        if not self._stream.done and not self._owner._closed:
            self._owner._run(self._stream.__aexit__(None, None, None))

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncSubscription(Iterator[Event]):
    def __init__(self, owner: SyncClient, sub: Subscription) -> None:
        self._owner = owner
        self._sub = sub

    def __next__(self) -> Event:
        try:
            return self._owner._run(self._sub.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def next(self, timeout: float) -> Event:
        """The next event, or ``TimeoutError`` after ``timeout`` seconds."""

        async def get() -> Event:
            async with asyncio.timeout(timeout):
                return await self._sub.__anext__()

        return self._owner._run(get())

    def close(self) -> None:
        if not self._owner._closed:
            self._owner._run(self._sub.aclose())

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
