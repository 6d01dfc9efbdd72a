"""The unit files are valid for systemd and carry the hardening and readiness settings we promise."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_UNIT = ROOT / "systemd" / "enigmad.service"
USER_UNIT = ROOT / "systemd" / "user" / "enigmad.service"

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (scripts/setup.sh installs it)"
)


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def _verifiable_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at an executable that exists here (verify checks the path)."""
    lines = []
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart=") and line != "ExecStart=":
            line = f"ExecStart={sys.executable} -m daemon"
        lines.append(line)
    out = tmp_path / "enigmad.service"
    out.write_text("\n".join(lines) + "\n")
    return out


@needs_systemd
def test_system_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _verifiable_copy(SYSTEM_UNIT, tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Unknown key" not in res.stderr, res.stderr


@needs_systemd
def test_user_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _verifiable_copy(USER_UNIT, tmp_path)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    res = subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"XDG_RUNTIME_DIR": str(runtime), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    assert "Unknown key" not in res.stderr, res.stderr


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_unit_is_notify_type_with_watchdog_and_bounded_restarts(unit: Path) -> None:
    u = _unit(unit)
    service = u["Service"]
    assert service["Type"] == "notify"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert int(u["Unit"]["StartLimitBurst"]) > 0
    assert "kill -HUP $MAINPID" in service["ExecReload"]


def test_system_unit_is_hardened() -> None:
    service = _unit(SYSTEM_UNIT)["Service"]
    expected = {
        "User": "enigma",
        "StateDirectory": "enigma",
        "ConfigurationDirectory": "enigma",
        "CacheDirectory": "enigma",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "SystemCallFilter": "@system-service",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert set(service["RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_and_tmpfiles_create_the_account_and_private_config_dir(tmp_path: Path) -> None:
    (tmp_path / "etc" / "default").mkdir(parents=True)
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(ROOT / "systemd" / "enigmad.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert passwd.startswith("enigma:x:")
    assert "/usr/sbin/nologin" in passwd
    subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(ROOT / "systemd" / "enigmad.tmpfiles")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    conf = tmp_path / "etc" / "enigma"
    assert conf.is_dir()
    assert conf.stat().st_mode & 0o777 == 0o750
