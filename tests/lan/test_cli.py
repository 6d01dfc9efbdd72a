"""``enigma peers`` and ``enigma discover`` as a user runs them, against a daemon on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli.conftest import Run, pointed_at, runner
from tests.conftest import DaemonLauncher, DaemonProcess, StartDaemon

CONFIG = '[modules]\nautoload = ["peers"]\n'


@pytest.fixture(scope="module")
def peer_daemon(module_launcher: DaemonLauncher) -> DaemonProcess:
    """Shared by the tests that only ask the daemon or are refused (each pairing window is a new one); the test
    that pairs, and so changes what ``peers`` lists, starts its own."""
    return module_launcher.start("--node-id", "cli-node", config=CONFIG)


def _enigma_at(daemon: DaemonProcess, tmp_path: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["NO_COLOR"] = "1"
    return runner(pointed_at(daemon, env))


@pytest.fixture
def enigma_at(peer_daemon: DaemonProcess, tmp_path: Path) -> Run:
    return _enigma_at(peer_daemon, tmp_path)


def test_peers_list_with_nobody_paired_says_how_to_pair(enigma_at: Run) -> None:
    r = enigma_at("peers")
    assert r.returncode == 0, r.stderr
    assert "no peers paired: enigma peers pair --accept" in r.stdout
    assert "cli-node: not announcing: bound to loopback only" in r.stdout


def test_accept_shows_the_code_and_the_command_for_the_other_side(enigma_at: Run) -> None:
    r = enigma_at("peers", "pair", "--accept", "--role", "device", "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["role"] == "device"
    assert body["endpoint"].startswith("tcp://127.0.0.1:")
    assert len(body["code"]) == 7


def test_a_client_pairs_its_own_key_and_learns_the_daemon_key(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    peer_daemon = daemon_factory("--node-id", "cli-node", config=CONFIG)
    enigma_at = _enigma_at(peer_daemon, tmp_path)
    assert enigma_at("keys").returncode == 0
    window = json.loads(enigma_at("peers", "pair", "--accept", "--json").stdout)
    r = enigma_at("peers", "pair", window["endpoint"], window["code"], "--as-client", "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["peer"]["node_id"] == "cli-node"
    assert body["fingerprint"] == window["fingerprint"]
    listed = json.loads(enigma_at("peers", "list", "--json").stdout)["peers"]
    assert [(p["node_id"].startswith("client-"), p["role"], p["endpoints"]) for p in listed] == [(True, "user", {})]
    allow = json.loads((peer_daemon.data_dir / "allow.json").read_text())
    assert [e["role"] for e in allow] == ["user"]


def test_wrong_code_fails_with_one_line(enigma_at: Run) -> None:
    assert enigma_at("keys").returncode == 0
    window = json.loads(enigma_at("peers", "pair", "--accept", "--json").stdout)
    wrong = "000-000" if window["code"] != "000-000" else "111-111"
    r = enigma_at("peers", "pair", window["endpoint"], wrong, "--as-client")
    assert r.returncode == 1
    assert "wrong pairing code (2 attempts left)" in r.stderr


def test_pair_without_endpoint_and_code_is_a_usage_error(enigma_at: Run) -> None:
    r = enigma_at("peers", "pair")
    assert r.returncode == 2
    assert "peers pair needs the ENDPOINT and CODE the other side shows" in r.stderr


def test_unpair_of_an_unknown_peer_fails_with_its_reason(enigma_at: Run) -> None:
    r = enigma_at("peers", "unpair", "ghost")
    assert r.returncode == 1
    assert "no paired peer 'ghost'" in r.stderr


def test_discover_via_a_loopback_daemon_says_discovery_is_off(enigma_at: Run) -> None:
    r = enigma_at("discover", "--duration", "0.5")
    assert r.returncode == 1
    assert "discovery is off on this daemon: bound to loopback only" in r.stderr


def test_discover_refuses_a_name_for_an_interface(enigma_at: Run) -> None:
    r = enigma_at("discover", "--interface", "eth0", "--duration", "0.5")
    assert r.returncode != 0
    assert "'eth0' is not an IPv4 address" in r.stderr
