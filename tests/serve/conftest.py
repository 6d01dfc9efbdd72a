"""Fixtures for serving tests: module-scoped daemons (a model load is the expensive part, so tests share one)
and a fake Ollama server on its own thread, reachable from a daemon subprocess."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk import Client
from tests.conftest import DaemonProcess, clean_env
from tests.serve.fake_ollama import FakeOllama

StartDaemon = Callable[..., DaemonProcess]


class FakeOllamaThread:
    """A ``FakeOllama`` served from a background thread's event loop (so any fixture scope can use it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server: FakeOllama | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="fake-ollama", daemon=True)

    def __enter__(self) -> FakeOllamaThread:
        self._thread.start()
        self.server = self.call(self._start)
        return self

    async def _start(self) -> FakeOllama:
        server = FakeOllama()
        await server.__aenter__()
        return server

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.call(self.server.__aexit__)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` (a coroutine function or a plain one) on the server's loop and return its result."""

        async def run() -> Any:
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def configure(self, **fields: Any) -> None:
        """Set reply script/hold flags; resets the hold events and the request log."""

        def apply() -> None:
            assert self.server is not None
            for k, v in fields.items():
                setattr(self.server, k, v)
            self.server.release = asyncio.Event()
            self.server.first_token_sent = asyncio.Event()
            self.server.disconnected = asyncio.Event()

        self.call(apply)

    def release(self) -> None:
        self.call(lambda: self.server.release.set())  # type: ignore[union-attr]

    def wait_disconnected(self, timeout: float = 10.0) -> bool:
        async def wait() -> bool:
            assert self.server is not None
            try:
                await asyncio.wait_for(self.server.disconnected.wait(), timeout)
            except TimeoutError:
                return False
            return True

        return bool(asyncio.run_coroutine_threadsafe(wait(), self.loop).result(timeout + 5))

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        assert self.server is not None
        return list(self.server.requests)


@pytest.fixture(scope="module")
def fake_ollama() -> Iterator[FakeOllamaThread]:
    with FakeOllamaThread() as fake:
        yield fake


@pytest.fixture(scope="module")
def module_daemon_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartDaemon]:
    """Like ``daemon_factory`` but module-scoped: daemons live until the test module ends."""
    tmp = tmp_path_factory.mktemp("serve")
    started: list[DaemonProcess] = []
    counter = iter(range(1000))

    def start(
        config: str, *, data_dir: Path | None = None, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> DaemonProcess:
        n = next(counter)
        data_dir = data_dir or tmp / f"data-{n}"
        cfg = tmp / f"enigmad-{n}.toml"
        cfg.write_text(config)
        args = [sys.executable, "-m", "daemon", "--data-dir", str(data_dir), "--config", str(cfg)]
        args += ["--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0"]
        log_path = tmp / f"enigmad-{n}.log"
        d = DaemonProcess.spawn(args, data_dir, log_path, clean_env(tmp, env))
        started.append(d)
        return d.wait_ready(timeout)

    yield start
    for d in started:
        if d.proc.poll() is None:
            try:
                d.stop(timeout=20)
            except AssertionError:
                d.kill()
        if d.proc.stdout is not None:
            d.proc.stdout.close()


async def send_chat(client: Client, body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """One ``chat.send`` to its end: the text chunks and the end body."""
    async with client.stream("chat.send", body) as s:
        chunks = [c["text"] async for c in s]
    assert s.result is not None
    return chunks, s.result
