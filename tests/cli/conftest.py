"""Run the installed ``enigma`` command the way a user does: a subprocess with a clean environment.

Most CLI tests only read from the daemon or switch the ``echo`` module, so one daemon per test module serves
them (``shared_daemon``), and ``cli`` unloads every module (``echo``) before each test so every test starts
from the same state. Tests that stop or reconfigure a daemon start their own with ``daemon_factory``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, module_daemon, unload_all

ENIGMA = str(Path(sys.executable).parent / "enigma")

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """No ENIGMA_* settings leak in from the developer's shell, and keys go to a temporary config dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["NO_COLOR"] = "1"
    return env


def runner(env: dict[str, str]) -> Run:
    """``run(*args, timeout=20)`` → the finished ``enigma`` process with text stdout/stderr."""

    def run(*args: str, timeout: float = 20.0, env: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ENIGMA, *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        )

    return run


@pytest.fixture
def enigma(cli_env: dict[str, str]) -> Run:
    """``enigma`` with no daemon configured (tests pass --rpc themselves, or need none)."""
    return runner(cli_env)


def pointed_at(daemon: DaemonProcess, env: dict[str, str]) -> dict[str, str]:
    """The environment a user would set up for ``daemon``: ENIGMA_RPC and ENIGMA_EVENTS."""
    return dict(env, ENIGMA_RPC=daemon.rpc, ENIGMA_EVENTS=daemon.events)


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One enigmad (defaults, free loopback ports) for all the tests of a module; stopped at the end."""
    # A quick heartbeat only shortens the wait of tails for their subscription to be confirmed.
    yield from module_daemon(tmp_path_factory, {"ENIGMA_DAEMON__HEARTBEAT": "0.25"})


@pytest.fixture
def cli(shared_daemon: DaemonProcess, cli_env: dict[str, str]) -> Run:
    """``enigma`` pointed at the shared daemon, with every module (``echo`` too) unloaded as every test expects."""
    unload_all(shared_daemon)
    return runner(pointed_at(shared_daemon, cli_env))


@pytest.fixture
def cli_popen(shared_daemon: DaemonProcess, cli_env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a long-running ``enigma`` (a tail); every one started is killed at teardown if still running."""
    env = pointed_at(shared_daemon, cli_env)
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [ENIGMA, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
