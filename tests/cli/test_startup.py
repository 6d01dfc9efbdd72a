"""``enigma --help`` must start fast: it may not import the SDK, ZeroMQ, msgpack, asyncio, torch or numpy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli.conftest import ENIGMA

HEAVY = ("torch", "numpy", "zmq", "msgpack", "asyncio", "engine", "daemon", "clients.sdk", "bus.envelope", "json")


def _imported_by(*args: str) -> set[str]:
    """Every module the real ``enigma`` script imports, read from ``python -X importtime``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", ENIGMA, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    names = set()
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    assert "clients.cli.main" in names  # the parse worked and we looked at the real command
    return names


@pytest.mark.parametrize("args", [("--help",), ("modules", "--help"), ("events", "--help"), ("keys", "--help")])
def test_help_imports_nothing_heavy(args: tuple[str, ...]) -> None:
    names = _imported_by(*args)
    loaded = sorted(n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY))
    assert loaded == []


def test_help_lists_every_command_group() -> None:
    out = subprocess.run([ENIGMA, "--help"], capture_output=True, text=True, timeout=30, check=True).stdout
    for command in ("status", "ping", "methods", "modules", "events", "keys"):
        assert f"    {command} " in out


def test_version_prints_the_package_version() -> None:
    out = subprocess.run([ENIGMA, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    assert out.startswith("enigma 0.")
