"""enigmad under a fake systemd: READY once serving (before the modules load), STATUS= while they load,
watchdog from the loop, reload and stop states."""

from __future__ import annotations

import itertools
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, StartDaemon, clean_env
from tests.daemon import gated_daemon
from tests.daemon.raw_client import RawClient

WATCHDOG_USEC = 200_000  # 0.2 s timeout → a ping every 0.1 s


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a thread stamps every message with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._cursor = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        self.sock.settimeout(0.2)
        while not self._closed:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            msg = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            with self._cond:
                self.messages.append((time.monotonic(), msg))
                self._cond.notify_all()

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def wait_for(self, key: str, timeout: float = 20.0) -> dict[str, str]:
        """The next message (after the last one returned) that has ``key``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._cursor < len(self.messages):
                    _, msg = self.messages[self._cursor]
                    self._cursor += 1
                    if key in msg:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {key} from the daemon within {timeout}s; got {self.messages[-5:]}")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path):
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


async def _ping(d: DaemonProcess) -> dict:
    client = RawClient(d.rpc)
    try:
        return await client.call("sys.ping", {}, timeout=5)
    finally:
        client.close()


async def test_ready_is_sent_only_when_endpoints_answer(daemon_factory: StartDaemon, systemd: FakeSystemd) -> None:
    d = daemon_factory(env=systemd.env(), wait=False)
    first = systemd.wait_for("READY")
    # The ready line is printed just before READY=1, so the endpoints are known and must answer now.
    d.wait_ready(5)
    assert first["READY"] == "1"
    assert first["STATUS"].startswith("serving:")
    assert (await _ping(d))["pong"] is True


async def test_ready_comes_before_the_modules_load_and_status_says_what_is_loading(
    daemon_factory: StartDaemon, systemd: FakeSystemd
) -> None:
    config = "[modules]\nautoload = ['gated']\n"
    d = daemon_factory(env=systemd.env(), config=config, main=gated_daemon.MAIN, loaded=False)
    ready = systemd.wait_for("READY")
    # READY=1 means "answering": the module is still queued or loading, and STATUS= says so.
    assert ready["STATUS"].startswith("loading gated (")
    assert ready["STATUS"].endswith("; 0 of 1 modules active")
    assert (await _ping(d))["pong"] is True
    client = RawClient(d.rpc, d.events)
    try:
        await gated_daemon.open_gate(client, "gated")
    finally:
        client.close()
    while not (status := systemd.wait_for("STATUS")["STATUS"]).startswith("serving:"):
        assert status.startswith("loading gated (")
    assert status.endswith(", 1 modules active")
    d.wait_loaded()


async def test_watchdog_pings_arrive_periodically(daemon_factory: StartDaemon, systemd: FakeSystemd) -> None:
    daemon_factory(env=systemd.env())
    systemd.wait_for("READY")
    pings = [systemd.wait_for("WATCHDOG", timeout=5) for _ in range(5)]
    assert all(p["WATCHDOG"] == "1" for p in pings)


def test_sighup_sends_reloading_then_ready(daemon_factory: StartDaemon, systemd: FakeSystemd) -> None:
    import signal

    d = daemon_factory(env=systemd.env(), config="[daemon]\nlog_level = 'info'\n")
    systemd.wait_for("READY")
    d.send_signal(signal.SIGHUP)
    reloading = systemd.wait_for("RELOADING")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert systemd.wait_for("READY")["READY"] == "1"


def test_sigterm_sends_stopping_exits_zero_and_closes_the_store(
    daemon_factory: StartDaemon, systemd: FakeSystemd
) -> None:
    import signal

    d = daemon_factory(env=systemd.env())
    systemd.wait_for("READY")
    d.send_signal(signal.SIGTERM)
    assert systemd.wait_for("STOPPING")["STOPPING"] == "1"
    assert d.stop(timeout=15) == 0
    # Cleanly closed: the WAL was checkpointed into the main file and the database is intact.
    wal = d.db_path.with_name(d.db_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    with sqlite3.connect(d.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _start_blocking_daemon(tmp_path: Path, env: dict[str, str]) -> DaemonProcess:
    args = [sys.executable, "-m", "tests.systemd.blocking_daemon", "--data-dir", str(tmp_path / "data")]
    args += ["--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0"]
    env = clean_env(tmp_path, {**env, "ENIGMA_MODULES__AUTOLOAD": "blocker"})
    return DaemonProcess.spawn(args, tmp_path / "data", tmp_path / "enigmad.log", env)


async def test_a_blocked_loop_misses_its_watchdog_pings(tmp_path: Path, systemd: FakeSystemd) -> None:
    d = _start_blocking_daemon(tmp_path, systemd.env())
    try:
        d.wait_ready()
        systemd.wait_for("READY")
        systemd.wait_for("WATCHDOG", timeout=5)
        client = RawClient(d.rpc)
        try:
            sent = time.monotonic()
            reply = await client.call("test.block", {"seconds": 1.5}, timeout=10)
        finally:
            client.close()
        assert reply == {"blocked": 1.5}
        # Collect the pings around the block: none may fall inside it.
        after = systemd.wait_for("WATCHDOG", timeout=5)
        assert after["WATCHDOG"] == "1"
        times = [t for t, m in systemd.messages if "WATCHDOG" in m]
        gaps = [b - a for a, b in itertools.pairwise(times) if b > sent]
        assert max(gaps) >= 1.0, f"watchdog kept pinging during a 1.5 s block: gaps {gaps}"
    finally:
        d.stop()
        if d.proc.stdout is not None:
            d.proc.stdout.close()
