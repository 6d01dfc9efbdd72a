"""Key files, fingerprints, the allow-list file and the loopback rule."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from bus.auth import AllowList, KeyPair, fingerprint, generate_keypair, is_loopback, load_keypair, save_keypair
from bus.errors import BadRequest


def test_keypair_round_trips_through_an_owner_only_file(tmp_path: Path) -> None:
    kp = generate_keypair()
    path = tmp_path / "keys" / "server.json"
    save_keypair(path, kp)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keypair(path) == kp
    assert json.loads(path.read_text()) == {"public": kp.public, "secret": kp.secret}


def test_keypair_repr_hides_the_secret() -> None:
    kp = generate_keypair()
    assert kp.secret not in repr(kp)


def test_load_keypair_with_bad_content_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text('{"public": "short"}')
    with pytest.raises(BadRequest, match=f"key pair file {path} must hold"):
        load_keypair(path)


def test_fingerprint_is_four_groups_of_four_hex_digits() -> None:
    fp = fingerprint(generate_keypair().public)
    groups = fp.split(":")
    assert [len(g) for g in groups] == [4, 4, 4, 4]
    assert all(c in "0123456789abcdef" for c in fp.replace(":", ""))


def test_allow_list_persists_roles_and_names(tmp_path: Path) -> None:
    a, b = generate_keypair().public, generate_keypair().public
    allow = AllowList(tmp_path / "allow.json").load()
    allow.add(a, "device", "robot-1")
    allow.add(b, "user", "laptop")
    allow.save()
    again = AllowList(tmp_path / "allow.json").load()
    assert again.role_of(a) == "device"
    assert again.role_of(b) == "user"
    assert [e["name"] for e in again.entries()] == ["robot-1", "laptop"]
    assert again.entries()[0]["fingerprint"] == fingerprint(a)
    assert stat.S_IMODE((tmp_path / "allow.json").stat().st_mode) == 0o600


def test_allow_list_add_twice_replaces_the_role(tmp_path: Path) -> None:
    key = generate_keypair().public
    allow = AllowList(tmp_path / "allow.json")
    allow.add(key, "device", "x")
    allow.add(key, "admin", "x")
    assert allow.role_of(key) == "admin"
    assert len(allow.entries()) == 1


def test_allow_list_remove_by_name_or_key(tmp_path: Path) -> None:
    a, b = generate_keypair().public, generate_keypair().public
    allow = AllowList(tmp_path / "allow.json")
    allow.add(a, "user", "phone")
    allow.add(b, "user", "tablet")
    assert allow.remove("phone") is True
    assert allow.remove(b) is True
    assert allow.remove("phone") is False
    assert allow.role_of(a) is None


def test_allow_list_refuses_unknown_role(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="role must be one of"):
        AllowList(tmp_path / "a.json").add(generate_keypair().public, "root", "x")


def test_allow_list_refuses_malformed_key(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="public key must be a 40-character Z85 string"):
        AllowList(tmp_path / "a.json").add("not-a-key", "user", "x")


def test_allow_list_file_with_bad_entry_names_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    path.write_text(json.dumps([{"key": "k", "role": "god"}]))
    with pytest.raises(BadRequest, match=f"allow-list {path}: entry 0 needs 'key' and a 'role'"):
        AllowList(path).load()


def test_allow_list_reloads_when_the_file_changes(tmp_path: Path) -> None:
    key = generate_keypair().public
    path = tmp_path / "allow.json"
    live = AllowList(path).load()
    assert live.reload_if_changed() is False
    editor = AllowList(path).load()
    editor.add(key, "user", "new")
    editor.save()
    assert live.reload_if_changed() is True
    assert live.role_of(key) == "user"


def test_missing_allow_list_is_empty(tmp_path: Path) -> None:
    assert AllowList(tmp_path / "none.json").load().entries() == []


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp://127.0.0.1:7700", True),
        ("tcp://127.0.0.1:0", True),
        ("tcp://127.8.9.1:7700", True),
        ("tcp://[::1]:7700", True),
        ("tcp://localhost:7700", True),
        ("ipc:///run/enigma/rpc", True),
        ("inproc://x", True),
        ("tcp://*:7700", False),
        ("tcp://0.0.0.0:7700", False),
        ("tcp://192.168.1.10:7700", False),
        ("tcp://[::]:7700", False),
        ("tcp://eth0:7700", False),
    ],
)
def test_is_loopback(endpoint: str, expected: bool) -> None:
    assert is_loopback(endpoint) is expected


def test_endpoint_without_transport_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="has no transport"):
        is_loopback("127.0.0.1:7700")


def test_keypair_is_a_plain_value() -> None:
    assert KeyPair("a", "b") == KeyPair("a", "b")
