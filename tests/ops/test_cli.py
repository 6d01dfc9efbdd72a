"""``enigma backup`` and ``enigma doctor`` run the way a user runs them: the installed command, a clean env."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, StartDaemon, clean_env

ENIGMA = str(Path(sys.executable).parent / "enigma")
ENIGMAD = str(Path(sys.executable).parent / "enigmad")
CHECKS = ["daemon", "config", "modules", "model", "mqtt", "disk", "permissions"]


@pytest.fixture
def daemon(fresh_shared_daemon: DaemonProcess) -> DaemonProcess:
    """The module's shared daemon: these tests only read from it (a backup, the doctor's checks)."""
    return fresh_shared_daemon


def enigma(
    tmp: Path, *args: str, daemon: DaemonProcess | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = clean_env(tmp, {"NO_COLOR": "1"})
    if daemon is not None:
        env.update(ENIGMA_RPC=daemon.rpc, ENIGMA_EVENTS=daemon.events)
    return subprocess.run(
        [ENIGMA, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd or tmp, stdin=subprocess.DEVNULL
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- backup ------------------------------------------------------------------------------------------------------
def test_backup_create_then_restore_into_another_daemon(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    src = daemon_factory(data_dir=tmp_path / "src")
    assert enigma(tmp_path, "modules", "load", "echo", daemon=src).returncode == 0
    out = tmp_path / "b.tar.gz"

    made = enigma(tmp_path, "backup", "create", "-o", str(out), "--json", daemon=src)

    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["file"] == str(out)
    assert doc["size"] == out.stat().st_size
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    dst = daemon_factory(data_dir=tmp_path / "dst")
    restored = enigma(tmp_path, "backup", "restore", str(out), daemon=dst)
    assert restored.returncode == 0, restored.stderr
    assert "from node" in restored.stdout
    listed = enigma(tmp_path, "modules", "list", "--json", daemon=dst)
    assert {m["name"]: m["state"] for m in json.loads(listed.stdout)["modules"]}["echo"] == "active"


def test_backup_create_names_the_file_after_node_and_time(daemon: DaemonProcess, tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.mkdir()
    made = enigma(tmp_path, "backup", "create", daemon=daemon, cwd=here)
    assert made.returncode == 0, made.stderr
    files = os.listdir(here)
    assert len(files) == 1
    assert files[0].startswith("enigma-backup-")
    assert files[0].endswith(".tar.gz")  # and no .partial left behind


def test_backup_create_refuses_to_overwrite_without_force(daemon: DaemonProcess, tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    out.write_bytes(b"keep me")
    made = enigma(tmp_path, "backup", "create", "-o", str(out), daemon=daemon)
    assert made.returncode == 1
    assert "exists — choose another name, or overwrite it with --force" in made.stderr
    assert out.read_bytes() == b"keep me"


def test_backup_restore_of_a_corrupt_file_says_so(daemon: DaemonProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(200))
    done = enigma(tmp_path, "backup", "restore", str(bad), daemon=daemon)
    assert done.returncode == 1
    assert "the backup archive is corrupt or truncated" in done.stderr
    assert "(bad_request)" in done.stderr


def test_backup_restore_of_a_missing_file_says_so(daemon: DaemonProcess, tmp_path: Path) -> None:
    done = enigma(tmp_path, "backup", "restore", str(tmp_path / "nope.tar.gz"), daemon=daemon)
    assert done.returncode == 1
    assert "cannot read" in done.stderr


# -- doctor ------------------------------------------------------------------------------------------------------
def test_doctor_on_a_healthy_daemon_exits_0(daemon: DaemonProcess, tmp_path: Path) -> None:
    done = enigma(tmp_path, "doctor", daemon=daemon)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "DETAIL"]
    assert lines[1].startswith("ok      daemon       enigmad ")
    assert all(line.split()[0] in ("ok", "warn", "skip") for line in lines[1:])


def test_doctor_json_lists_every_check(daemon: DaemonProcess, tmp_path: Path) -> None:
    done = enigma(tmp_path, "doctor", "--json", daemon=daemon)
    doc = json.loads(done.stdout)
    assert done.returncode == 0
    assert doc["ok"] is True
    assert [c["name"] for c in doc["checks"]] == CHECKS
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["permissions"]["status"] == "ok"
    assert by_name["model"]["status"] == "warn"
    assert by_name["model"]["hint"] == "load one: enigma modules load llm"


def test_doctor_with_the_daemon_down_fails_with_the_hint_to_start_it(tmp_path: Path) -> None:
    env_rpc = f"tcp://127.0.0.1:{free_port()}"
    done = enigma(tmp_path, "doctor", "--rpc", env_rpc)
    assert done.returncode == 1
    daemon_line = done.stdout.splitlines()[1]
    assert daemon_line.startswith("fail    daemon")
    assert f"cannot reach enigmad at {env_rpc}" in daemon_line
    assert "start it: sudo systemctl start enigmad (or run enigmad)" in daemon_line
    assert done.stderr == ""  # the report is the whole answer


def test_doctor_json_with_the_daemon_down_is_one_document(tmp_path: Path) -> None:
    done = enigma(tmp_path, "doctor", "--json", "--rpc", f"tcp://127.0.0.1:{free_port()}")
    doc = json.loads(done.stdout)
    assert done.returncode == 1
    assert doc["ok"] is False
    assert doc["failed"] == ["daemon"]
    assert {c["name"]: c["status"] for c in doc["checks"]}["modules"] == "skip"


def test_doctor_warns_about_a_world_readable_key_file(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    keys = subprocess.run(
        [ENIGMAD, "--data-dir", str(data_dir), "keys", "show"], env=clean_env(tmp_path), capture_output=True, timeout=60
    )
    assert keys.returncode == 0
    (data_dir / "server.key").chmod(0o644)
    d = daemon_factory(data_dir=data_dir)
    done = enigma(tmp_path, "doctor", "--json", daemon=d)
    perms = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["permissions"]
    assert done.returncode == 0  # a warning, not a failure
    assert perms["status"] == "warn"
    assert f"{data_dir / 'server.key'} is world-readable (mode 0644)" in perms["message"]
    assert perms["hint"] == f"chmod 0600 {data_dir / 'server.key'}"


def test_doctor_fails_on_an_invalid_config_file_naming_the_key(daemon: DaemonProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon]\nshutdown_timeout = -1\n")
    done = enigma(tmp_path, "doctor", "--json", "--config", str(bad), daemon=daemon)
    config = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["config"]
    assert done.returncode == 1
    assert config["status"] == "fail"
    assert "daemon.shutdown_timeout: must be greater than 0" in config["message"]


@pytest.mark.timeout(60)
def test_doctor_fails_when_the_mqtt_broker_is_unreachable(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    config = f"""
[modules]
autoload = ["mqtt"]

[modules.mqtt]
url = "mqtt://127.0.0.1:{free_port()}"
connect_timeout = 0.5
"""
    d = daemon_factory(config=config)
    done = enigma(tmp_path, "doctor", "--json", daemon=d)
    mqtt = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["mqtt"]
    assert done.returncode == 1
    assert mqtt["status"] == "fail"
    assert mqtt["message"].startswith("the mqtt module failed: ")
    assert "systemctl status mosquitto" in mqtt["hint"]


def test_doctor_reads_disk_space_from_the_system_module(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    d = daemon_factory(config='[modules]\nautoload = ["system"]\n')
    done = enigma(tmp_path, "doctor", "--json", daemon=d)
    disk = {c["name"]: c for c in json.loads(done.stdout)["checks"]}["disk"]
    assert disk["status"] in ("ok", "warn")
    assert disk["message"].endswith("(system.info)")
