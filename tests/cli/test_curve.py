"""CURVE from the CLI: ``enigma keys`` + ``enigmad keys allow`` + ``--curve-server-key-file`` gives the key's role."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Run
from tests.conftest import DaemonProcess, StartDaemon, run_enigmad


def _enigmad_keys(data_dir: Path, tmp_path: Path, *args: str) -> str:
    r = run_enigmad(tmp_path, "--data-dir", str(data_dir), "keys", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def curve_daemon(daemon_factory: StartDaemon, tmp_path: Path, enigma: Run) -> tuple[DaemonProcess, Path]:
    """A daemon that requires CURVE (on loopback), with this test's client key allowed as ``user``."""
    data_dir = tmp_path / "curve-data"
    public = json.loads(enigma("keys", "--json").stdout)["public"]
    _enigmad_keys(data_dir, tmp_path, "allow", public, "--role", "user", "--name", "cli-test")
    daemon = daemon_factory(env={"ENIGMA_SECURITY__CURVE": "true"}, data_dir=data_dir)
    return daemon, data_dir / "server.key"


def _at(daemon: DaemonProcess) -> tuple[str, ...]:
    return ("--rpc", daemon.rpc, "--events", daemon.events)


def test_allowed_key_connects_with_its_role(enigma: Run, curve_daemon: tuple[DaemonProcess, Path]) -> None:
    daemon, server_key = curve_daemon
    r = enigma(*_at(daemon), "--curve-server-key-file", str(server_key), "status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["caller"] == {"role": "user", "transport": "zmq"}


def test_server_key_given_inline_works_too(enigma: Run, curve_daemon: tuple[DaemonProcess, Path]) -> None:
    daemon, server_key = curve_daemon
    key = json.loads(server_key.read_text())["public"]
    r = enigma(*_at(daemon), "--curve-server-key", key, "ping")
    assert r.returncode == 0, r.stderr


def test_role_too_low_is_forbidden_exit_1(enigma: Run, curve_daemon: tuple[DaemonProcess, Path]) -> None:
    daemon, server_key = curve_daemon
    r = enigma(*_at(daemon), "--curve-server-key-file", str(server_key), "modules", "load", "echo")
    assert r.returncode == 1
    assert r.stderr == "enigma: role 'user' may not call 'module.load' (needs 'admin') (forbidden)\n"


def test_key_not_allowed_exits_3_with_a_key_hint(
    enigma: Run, curve_daemon: tuple[DaemonProcess, Path], tmp_path: Path
) -> None:
    daemon, server_key = curve_daemon
    stranger = tmp_path / "stranger.key"
    assert enigma("keys", "--key-file", str(stranger)).returncode == 0
    r = enigma(
        *_at(daemon), "--curve-server-key-file", str(server_key), "--key-file", str(stranger), "ping", "--timeout", "2"
    )
    assert r.returncode == 3
    assert r.stderr.startswith(f"enigma: cannot reach enigmad at {daemon.rpc} — is it running, ")
    assert "is your key allowed?" in r.stderr


def test_plain_client_cannot_reach_a_curve_daemon(enigma: Run, curve_daemon: tuple[DaemonProcess, Path]) -> None:
    daemon, _ = curve_daemon
    r = enigma(*_at(daemon), "ping", "--timeout", "2")
    assert r.returncode == 3


def test_curve_without_a_client_key_says_how_to_make_one(enigma: Run, tmp_path: Path) -> None:
    missing = tmp_path / "none.key"
    key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"  # any well-formed Z85 key; nothing is contacted
    r = enigma("--curve-server-key", key, "--key-file", str(missing), "ping")
    assert r.returncode == 1
    assert r.stderr == f"enigma: no client key at {missing} — create one with: enigma keys\n"


def test_malformed_server_key_is_a_usage_error(enigma: Run) -> None:
    r = enigma("--curve-server-key", "too-short", "ping")
    assert r.returncode == 2
    assert r.stderr == "enigma: the daemon's public key must be a 40-character Z85 string\n"


def test_inline_server_key_starting_with_a_dash_is_not_taken_for_an_option(enigma: Run) -> None:
    # The key is taken as the option's value (no usage error, exit 2): the command goes on to the next step and
    # stops there, because this test's config dir holds no client key yet.
    r = enigma("--rpc", "tcp://127.0.0.1:9", "--timeout", "1", "--curve-server-key", "-" + "a" * 39, "ping")
    assert r.returncode == 1, r.stderr
    assert "no client key" in r.stderr
