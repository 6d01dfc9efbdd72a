"""What the app keeps on the device, and how it reads what users type as addresses."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bus.auth import generate_keypair
from bus.errors import BadRequest
from clients.app.store import AppStore, DaemonEntry, Settings
from clients.app.viewmodels import parse_address
from tests.app.conftest import Views


@pytest.mark.parametrize(
    ("text", "rpc", "events"),
    [
        ("192.168.1.20", "tcp://192.168.1.20:7700", "tcp://192.168.1.20:7701"),
        ("pi.local:7800", "tcp://pi.local:7800", "tcp://pi.local:7801"),
        ("  tcp://host:9000 ", "tcp://host:9000", "tcp://host:9001"),
        ("[::1]:7700", "tcp://[::1]:7700", "tcp://[::1]:7701"),
        ("tcp://a:1000 tcp://a:2000", "tcp://a:1000", "tcp://a:2000"),
        ("a:1000, b:3000", "tcp://a:1000", "tcp://b:3000"),
    ],
)
def test_addresses_people_type_become_endpoints(text: str, rpc: str, events: str) -> None:
    assert parse_address(text) == (rpc, events)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "enter the daemon's address, e.g. 192.168.1.20 or pi.local:7700"),
        ("ipc:///tmp/x", "only tcp:// addresses are supported, got 'ipc:///tmp/x'"),
        ("bad host!", "'host!' is not a host name or address"),
        ("bad!host", "'bad!host' is not a host name or address"),
        ("h:0", "port '0' in 'h:0' must be a number from 1 to 65534"),
        ("h:7700 other", "'other' needs a port"),
        ("a b c", "expected one address or two endpoints, got 3 parts"),
    ],
)
def test_bad_addresses_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_address(text)
    assert err.value.message == message


def test_daemons_are_remembered_most_recent_first(tmp_path: Path) -> None:
    store = AppStore(tmp_path)
    store.remember(DaemonEntry("a", "tcp://a:1", "tcp://a:2"))
    store.remember(DaemonEntry("b", "tcp://b:1", "tcp://b:2"))
    assert [d.name for d in AppStore(tmp_path).daemons()] == ["b", "a"]
    store.remember(DaemonEntry("a", "tcp://a:5", "tcp://a:6"))
    assert [(d.name, d.rpc) for d in store.daemons()] == [("a", "tcp://a:5"), ("b", "tcp://b:1")]
    assert store.forget("b") is True
    assert store.forget("b") is False
    assert [d.name for d in store.daemons()] == ["a"]


def test_a_broken_daemons_file_does_not_brick_the_app(tmp_path: Path) -> None:
    (tmp_path / "daemons.json").write_text("{not json")
    (tmp_path / "settings.json").write_text('{"theme": "neon", "font_size": 99, "last_daemon": "x"}')
    store = AppStore(tmp_path)
    assert store.daemons() == []
    assert store.settings() == Settings(last_daemon="x")


def test_device_key_is_created_once_and_private(tmp_path: Path) -> None:
    store = AppStore(tmp_path)
    first = store.device_keypair()
    assert store.device_keypair() == first
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o600
    assert json.loads((tmp_path / "device.key").read_text())["public"] == first.public


def test_remembering_a_bad_server_key_is_refused(tmp_path: Path) -> None:
    store = AppStore(tmp_path)
    with pytest.raises(BadRequest, match="the daemon's public key must be a 40-character Z85 string"):
        store.remember(DaemonEntry("x", "tcp://x:1", "tcp://x:2", server_public="short"))
    good = generate_keypair().public
    assert store.remember(DaemonEntry("x", "tcp://x:1", "tcp://x:2", server_public=good)).server_fingerprint


async def test_settings_persist_and_font_size_is_clamped(views: Views) -> None:
    seen: list[tuple[str, object]] = []
    views.settings.bind(lambda what, d: seen.append((what, d)))
    views.settings.set_theme("light")
    views.settings.set_font_size(40)
    assert seen == [("theme", "light"), ("font_size", 28)]
    assert views.store.settings() == Settings(theme="light", font_size=28)


async def test_unknown_theme_is_refused_with_the_choices(views: Views) -> None:
    views.settings.set_theme("neon")
    assert views.settings.error == "theme must be one of dark, light"
    assert views.store.settings().theme == "dark"


async def test_settings_address_change_reconnects_there(views: Views, daemon: object) -> None:
    from tests.conftest import DaemonProcess

    assert isinstance(daemon, DaemonProcess)
    assert await views.settings.set_address(f"{daemon.rpc} {daemon.events}") is True
    await views.conn.wait_connected(30)
    assert views.conn.daemon is not None
    assert (views.conn.daemon.rpc, views.conn.daemon.events) == (daemon.rpc, daemon.events)


async def test_settings_refuse_a_bad_address(views: Views) -> None:
    assert await views.settings.set_address("h:0") is False
    assert views.settings.error == "port '0' in 'h:0' must be a number from 1 to 65534"
    assert views.conn.state == "offline"
