"""A daemon that is not there: exit code 3 and one line that says how to fix it."""

from __future__ import annotations

import json
import socket

import pytest

from clients.cli.exits import unreachable_message
from tests.cli.conftest import Run, pointed_at, runner
from tests.conftest import DaemonProcess


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [("ping",), ("status",), ("modules", "list"), ("events",)])
def test_no_daemon_exits_3_with_one_line_and_a_hint(enigma: Run, command: tuple[str, ...]) -> None:
    rpc = f"tcp://127.0.0.1:{_closed_port()}"
    r = enigma("--rpc", rpc, "--events", f"tcp://127.0.0.1:{_closed_port()}", "--timeout", "1", *command)
    assert r.returncode == 3
    assert r.stdout == ""
    assert r.stderr == f"enigma: cannot reach enigmad at {rpc} — is it running? (start it with: enigmad)\n"


def test_no_daemon_json_error_object(enigma: Run) -> None:
    rpc = f"tcp://127.0.0.1:{_closed_port()}"
    r = enigma("ping", "--json", "--rpc", rpc)
    assert r.returncode == 3
    assert json.loads(r.stdout) == {
        "error": {
            "code": "unreachable",
            "message": f"cannot reach enigmad at {rpc} — is it running? (start it with: enigmad)",
            "exit": 3,
        }
    }


def test_endpoint_from_environment_is_used(enigma: Run, cli_env: dict[str, str]) -> None:
    rpc = f"tcp://127.0.0.1:{_closed_port()}"
    r = enigma("ping", env=dict(cli_env, ENIGMA_RPC=rpc))
    assert r.returncode == 3
    assert rpc in r.stderr


def test_stopped_daemon_exits_3(daemon: DaemonProcess, cli_env: dict[str, str]) -> None:
    cli = runner(pointed_at(daemon, cli_env))
    assert cli("ping").returncode == 0
    daemon.stop()
    r = cli("ping")
    assert r.returncode == 3
    assert r.stderr == f"enigma: cannot reach enigmad at {daemon.rpc} — is it running? (start it with: enigmad)\n"


def test_verbose_adds_the_traceback(enigma: Run) -> None:
    r = enigma("ping", "--verbose", "--timeout", "1", "--rpc", f"tcp://127.0.0.1:{_closed_port()}")
    assert r.returncode == 3
    assert "Traceback (most recent call last)" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("enigma: cannot reach enigmad at")


def test_remote_endpoint_hint_asks_for_curve_keys() -> None:
    msg = unreachable_message("tcp://192.0.2.7:7700", remote=True, curve=False)
    assert msg.startswith("cannot reach enigmad at tcp://192.0.2.7:7700 — a daemon off this host needs CURVE")
    assert "--curve-server-key" in msg
    with_key = unreachable_message("tcp://192.0.2.7:7700", remote=True, curve=True)
    assert "is your key allowed?" in with_key
    assert "is your key allowed?" in unreachable_message("tcp://127.0.0.1:7700", remote=False, curve=True)
