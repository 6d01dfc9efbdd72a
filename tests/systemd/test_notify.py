"""The sd_notify client: speaks the datagram protocol, is a no-op without systemd, feeds the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def _recv(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_without_notify_socket_every_call_is_a_noop() -> None:
    n = Notifier(env={})
    assert not n.enabled
    assert n.send(READY=1) is False
    assert n.watchdog_interval is None


def test_ready_and_status_reach_the_socket(listener) -> None:
    sock, path = listener
    n = Notifier(env={"NOTIFY_SOCKET": path})
    n.ready("serving")
    assert _recv(sock) == {"READY": "1", "STATUS": "serving"}
    n.stopping()
    assert _recv(sock) == {"STOPPING": "1"}
    n.close()


def test_reloading_carries_a_monotonic_timestamp(listener) -> None:
    sock, path = listener
    n = Notifier(env={"NOTIFY_SOCKET": path})
    n.reloading()
    n.close()
    msg = _recv(sock)
    assert msg["RELOADING"] == "1"
    assert int(msg["MONOTONIC_USEC"]) > 0


def test_abstract_namespace_socket_is_supported() -> None:
    name = f"enigma-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        n.send(READY=1)
        n.close()
        assert _recv(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_watchdog_interval_is_half_the_timeout_and_respects_watchdog_pid() -> None:
    assert Notifier(env={"WATCHDOG_USEC": "4000000"}).watchdog_interval == 2.0
    assert Notifier(env={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 2.0
    assert Notifier(env={"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier(env={"WATCHDOG_USEC": "nonsense"}).watchdog_interval is None


async def test_watchdog_task_pings_until_cancelled(listener) -> None:
    sock, path = listener
    sock.setblocking(False)
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    task = asyncio.create_task(n.run_watchdog())
    loop = asyncio.get_running_loop()
    pings = [await asyncio.wait_for(loop.sock_recv(sock, 100), 5) for _ in range(3)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n.close()
    assert pings == [b"WATCHDOG=1"] * 3
