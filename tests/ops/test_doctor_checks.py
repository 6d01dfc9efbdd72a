"""The doctor's checks on their own, fed the answers a daemon gives: each verdict and its hint."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from clients.cli import doctor


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _mqtt(broker: str, connected: bool | None = True) -> list[dict[str, object]]:
    return [{"name": "mqtt", "state": "active", "info": {"broker": broker, "connected": connected}}]


def test_mqtt_broker_that_accepts_connections_is_ok() -> None:
    with _listening() as s:
        port = s.getsockname()[1]
        check = doctor._mqtt_check(_mqtt(f"mqtt://127.0.0.1:{port}"), local=True)
    assert check.status == "ok"
    assert check.message == f"broker 127.0.0.1:{port} reachable, daemon connected"


def test_mqtt_broker_that_refuses_connections_fails_with_a_hint() -> None:
    with _listening() as s:
        port = s.getsockname()[1]
    check = doctor._mqtt_check(_mqtt(f"mqtt://127.0.0.1:{port}", connected=False), local=True)
    assert check.status == "fail"
    assert check.message.startswith(f"cannot connect to the broker 127.0.0.1:{port}")
    assert "sudo systemctl start mosquitto" in check.hint


def test_mqtt_on_a_remote_daemons_loopback_is_judged_by_the_daemon() -> None:
    check = doctor._mqtt_check(_mqtt("mqtt://127.0.0.1:1883", connected=False), local=False)
    assert check.status == "fail"
    assert check.message == "the daemon is not connected to mqtt://127.0.0.1:1883"


def test_mqtt_not_loaded_is_skipped() -> None:
    assert doctor._mqtt_check([{"name": "mqtt", "state": "unloaded"}], local=True).status == "skip"


def test_disk_from_system_info_below_the_floor_fails() -> None:
    check = doctor._disk_check({"disk": {"free": 100 * 1024**2, "total": 8 * 1024**3}}, None)
    assert check.status == "fail"
    assert check.message == "100.0 MiB free of 8.0 GiB (system.info)"


def test_disk_from_system_info_that_is_low_warns() -> None:
    check = doctor._disk_check({"disk": {"free": 1024**3, "total": 8 * 1024**3}}, None)
    assert check.status == "warn"
    assert "less than 2 GiB left" in check.hint


def test_disk_of_a_remote_daemon_without_system_module_is_skipped() -> None:
    check = doctor._disk_check(None, None)
    assert check.status == "skip"
    assert "load the system module" in check.message


def test_data_dir_open_to_everyone_warns_with_chmod(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    check = doctor._permissions_check(None, None, d)
    assert check.status == "warn"
    assert f"{d} is open to every user (mode 0755)" in check.message
    assert f"chmod 0700 {d}" in check.hint


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_data_dir_owned_by_another_user_than_the_daemon_warns(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, -1)
    check = doctor._permissions_check({"pid": os.getpid()}, None, d)
    assert check.status == "warn"
    assert f"{d} is owned by uid 12345, the daemon runs as uid {os.geteuid()}" in check.message
    assert f"chown -R {os.geteuid()} {d}" in check.hint


def test_failed_module_warns_with_the_command_to_retry() -> None:
    check = doctor._modules_check(
        [{"name": "echo", "state": "active"}, {"name": "mqtt", "state": "failed", "error": "broker down"}]
    )
    assert check.status == "warn"
    assert check.message == "failed: mqtt (broker down)"
    assert check.hint == "fix the cause, then: enigma modules load mqtt"
