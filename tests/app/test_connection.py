"""Connecting the app's view models to a real daemon: state at a glance, reconnecting, remembering, pairing."""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path

import pytest

from bus.auth import fingerprint
from bus.errors import BadRequest, Unavailable
from clients.app.store import DaemonEntry
from tests.app.conftest import Views
from tests.app.waiting import wait_until
from tests.conftest import DaemonProcess, StartDaemon, run_enigmad
from tests.mqtt.broker import free_port


async def test_connect_reaches_connected_and_remembers_the_daemon(views: Views, daemon: DaemonProcess) -> None:
    states: list[str] = []
    views.conn.bind(lambda what, d: states.append(d) if what == "state" else None)
    await views.connect(daemon, name="home")
    assert states[0] == "connecting"
    assert views.conn.state == "connected"
    assert views.conn.boot_id
    remembered = views.store.daemons()
    assert [(d.name, d.rpc, d.events) for d in remembered] == [("home", daemon.rpc, daemon.events)]
    assert remembered[0].node_id == views.conn.node_id
    assert views.store.settings().last_daemon == "home"


async def test_no_daemon_shows_connecting_with_the_reason(views: Views) -> None:
    port = free_port()
    await views.conn.connect(DaemonEntry("nowhere", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}"))
    with pytest.raises(Unavailable) as err:
        await views.conn.wait_connected(5.0)
    assert views.conn.state == "connecting"
    assert err.value.message.startswith("not connected after 5 s: no answer from tcp://127.0.0.1:")
    assert "(is enigmad running?)" in err.value.message


async def test_calls_without_a_daemon_raise_unavailable(views: Views) -> None:
    with pytest.raises(Unavailable, match="not connected to a daemon: pick one on the Connect screen"):
        await views.modules.conn.require().call("sys.ping")


async def test_daemon_restart_is_noticed_and_views_refresh(
    views: Views, daemon_factory: StartDaemon, tmp_path: Path
) -> None:
    rpc, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    flags = ("--rpc", rpc, "--events", events)
    first = daemon_factory(*flags, loopback_ports=False, data_dir=tmp_path / "d")
    await views.connect(first)
    await wait_until(views.modules, lambda: views.modules.rows != [], what="module list")
    old_boot = views.conn.boot_id
    states: list[str] = []
    views.conn.bind(lambda what, d: states.append(d) if what == "state" else None)
    await asyncio.to_thread(first.stop)
    await wait_until(views.conn, lambda: views.conn.state == "reconnecting", what="reconnecting")
    assert "the daemon is stopping" in views.conn.detail
    config = '[modules]\nautoload = ["echo"]\n'
    await asyncio.to_thread(daemon_factory, *flags, loopback_ports=False, data_dir=tmp_path / "d", config=config)
    await views.conn.wait_connected(30.0)
    assert views.conn.restarts == 1
    assert views.conn.boot_id != old_boot
    assert states[0] == "reconnecting"
    assert states[-1] == "connected"
    # the module list was refreshed from the new daemon, which autoloaded echo
    await wait_until(views.modules, lambda: views.modules.row("echo").on, what="echo active after restart")  # type: ignore[union-attr]


async def test_manual_address_is_parsed_and_remembered(views: Views) -> None:
    entry = views.conn.add_manual("pi.local:7800", name="pi")
    assert (entry.rpc, entry.events) == ("tcp://pi.local:7800", "tcp://pi.local:7801")
    assert views.store.get("pi") == entry


async def test_bad_manual_address_is_refused_with_reason(views: Views) -> None:
    with pytest.raises(BadRequest, match="port '99999' in 'host:99999' must be a number from 1 to 65534"):
        views.conn.add_manual("host:99999")
    assert views.store.daemons() == []


def _enigmad_keys(data_dir: Path, tmp_path: Path, *args: str) -> str:
    r = run_enigmad(tmp_path, "--data-dir", str(data_dir), "keys", *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


async def test_pairing_shows_both_fingerprints_and_connects_once_allowed(
    views: Views, daemon_factory: StartDaemon, tmp_path: Path
) -> None:
    data_dir = tmp_path / "curve"
    daemon = daemon_factory(env={"ENIGMA_SECURITY__CURVE": "true"}, data_dir=data_dir)
    server_public = json.loads((data_dir / "server.key").read_text())["public"]
    info = views.conn.pair("lab", f"{daemon.rpc} {daemon.events}", server_public)
    device_public = views.store.device_keypair().public
    assert info.server_fingerprint == fingerprint(server_public)
    assert info.device_fingerprint == fingerprint(device_public)
    assert info.allow_command == f"enigmad keys allow {shlex.quote(device_public)} --role user --name enigma-app"
    assert shlex.split(info.allow_command)[3] == device_public  # pastes into a shell as is
    assert views.store.get("lab").server_public == server_public  # type: ignore[union-attr]

    await views.conn.connect(info.entry)
    await wait_until(views.conn, lambda: "the server refused our CURVE key" in views.conn.detail, what="refusal")
    assert views.conn.state == "connecting"

    await asyncio.to_thread(
        _enigmad_keys, data_dir, tmp_path, "allow", device_public, "--role", "user", "--name", "enigma-app"
    )
    await views.conn.wait_connected(30.0)
    status = await views.conn.require().call("sys.status")
    assert status["caller"] == {"role": "user", "transport": "zmq"}


async def test_pairing_refuses_a_malformed_server_key(views: Views) -> None:
    with pytest.raises(BadRequest, match="the daemon's public key must be a 40-character Z85 string"):
        views.conn.pair("lab", "10.0.0.2", "not-a-key")
    assert views.store.daemons() == []


async def test_discovered_daemons_are_published_to_listeners(views: Views) -> None:
    from clients.app.store import DiscoveredDaemon

    seen = []
    views.conn.bind(lambda what, d: seen.append(d) if what == "discovered" else None)
    found = DiscoveredDaemon("pi", "tcp://10.0.0.5:7700", "tcp://10.0.0.5:7701", node_id="pi")
    views.conn.set_discovered([found])
    assert seen == [[found]]
    assert found.entry() == DaemonEntry("pi", "tcp://10.0.0.5:7700", "tcp://10.0.0.5:7701", None, "pi")


def test_a_discovery_record_becomes_a_listed_daemon() -> None:
    from bus.auth import generate_keypair
    from bus.discovery import Record
    from clients.app.store import DiscoveredDaemon

    key = generate_keypair().public
    record = Record(
        node_id="pi", version="0.1.0", rpc="tcp://10.0.0.5:7700", events="tcp://10.0.0.5:7701", key=key,
        fingerprint=fingerprint(key), caps={"models": ["smollm2"]}, address="10.0.0.5", via="mdns",
    )  # fmt: skip
    found = DiscoveredDaemon.from_record(record)
    assert (found.name, found.rpc, found.events, found.server_public) == ("pi", record.rpc, record.events, key)
    assert found.fingerprint == fingerprint(key)
    assert found.info["models"] == ["smollm2"]
    assert found.entry().server_fingerprint == fingerprint(key)
