"""``daemon.settings``: each rule a module table can break is reported as key, rule, value and origin."""

from __future__ import annotations

from typing import Any

import pytest

from bus.errors import Unavailable
from daemon.config import Config
from daemon.services import Node, Services
from daemon.settings import SettingsError, validate

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "prefer": {"enum": ["local", "peers"], "default": "local"},
        "qos": {"enum": [0, 1, 2], "default": 1},
        "refresh": {"type": "number", "exclusiveMinimum": 0, "default": 5.0},
        "hosts": {"type": "array", "items": {"type": "string", "format": "ipv4"}, "default": []},
        "sampling": {
            "type": "object",
            "properties": {"top_k": {"type": "integer", "minimum": 0, "default": 0}},
            "additionalProperties": False,
            "default": {},
        },
    },
    "additionalProperties": False,
}
ORIGINS = {"modules.x.prefer": "in /etc/x.toml", "modules.x.hosts": "from $ENIGMA_MODULES__X__HOSTS"}


def check(data: dict[str, Any]) -> dict[str, Any]:
    return validate("modules.x", SCHEMA, data, Config(origins=ORIGINS).source)  # the daemon's own lookup


def test_an_empty_table_gets_every_default_nested_ones_too() -> None:
    assert check({}) == {"prefer": "local", "qos": 1, "refresh": 5.0, "hosts": [], "sampling": {"top_k": 0}}
    assert check({"sampling": {}})["sampling"] == {"top_k": 0}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prefer": "nearest"}, "modules.x.prefer must be 'local' or 'peers', got 'nearest' in /etc/x.toml"),
        ({"qos": True}, "modules.x.qos must be 0, 1 or 2, got True"),
        ({"refresh": 0}, "modules.x.refresh must be greater than 0, got 0"),
        ({"refresh": "5"}, "modules.x.refresh must be a number, got '5'"),
        ({"hosts": ["eth0"]}, "modules.x.hosts[0] must be an IPv4 address, got 'eth0' from $ENIGMA_MODULES__X__HOSTS"),
        ({"sampling": {"top_k": -1}}, "modules.x.sampling.top_k must be at least 0, got -1"),
        ({"sampling": {"temp": 1}}, "modules.x.sampling: unknown key 'temp' (known: top_k)"),
        ({"brokr": 1}, "modules.x: unknown key 'brokr' (known: hosts, prefer, qos, refresh, sampling)"),
    ],
)
def test_a_bad_value_is_named_by_key_rule_value_and_origin(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        check(data)
    assert info.value.message == message
    assert info.value.code == "bad_request"


class _Node:
    node_id = "n1"
    boot_id = "b1"
    version = "0"

    def endpoints(self) -> dict[str, str]:
        return {}


def test_a_service_is_found_by_its_kind_until_withdrawn() -> None:
    services = Services()
    assert services.missing((Node,)) == ["Node"]
    withdraw = services.provide(Node, _Node())
    assert services.get(Node).node_id == "n1"
    with pytest.raises(ValueError, match="a Node service is already offered"):
        services.provide(Node, _Node())
    withdraw()
    with pytest.raises(Unavailable, match="no Node service is available"):
        services.get(Node)
