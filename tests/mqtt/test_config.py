"""``[modules.mqtt]`` settings: every mistake a user can make is named with its key."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from bus.errors import BadRequest
from bus.mqtt_bridge import BridgeConfig
from bus.mqtt_link import MqttSettings


def test_defaults_need_no_config() -> None:
    conf = BridgeConfig.from_mapping("pi", {})
    assert conf.node_id == "pi"
    assert conf.mqtt.endpoint() == ("127.0.0.1", 1883, False, None, None)
    assert conf.mqtt.client_id == "enigmad-pi"
    assert (conf.qos_events, conf.qos_rpc, conf.default_role, conf.ha_discovery) == (1, 1, "device", False)


def test_url_carries_tls_port_and_credentials() -> None:
    conf = BridgeConfig.from_mapping("pi", {"broker": "mqtts://bob:s%40cret@broker.lan"})
    assert conf.mqtt.endpoint() == ("broker.lan", 8883, True, "bob", "s@cret")


def test_explicit_credentials_override_the_url() -> None:
    conf = BridgeConfig.from_mapping("pi", {"broker": "mqtt://bob:x@h:1999", "username": "eve", "password": "y"})
    assert conf.mqtt.endpoint() == ("h", 1999, False, "eve", "y")


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"brokr": "x"}, "modules.mqtt: unknown key 'brokr'"),
        ({"broker": "http://h"}, "MQTT broker URL must start with mqtt:// or mqtts://, got 'http://h'"),
        ({"broker": "mqtt://"}, "MQTT broker URL has no host: 'mqtt://'"),
        ({"broker": "mqtt://h:99999"}, "MQTT broker URL has a bad port: 'mqtt://h:99999'"),
        ({"qos_events": 3}, "modules.mqtt.qos_events must be 0, 1 or 2, got 3"),
        ({"event_qos": {"robot.": True}}, "modules.mqtt.event_qos.robot. must be 0, 1 or 2, got True"),
        ({"roles": {"alice": "root"}}, "modules.mqtt.roles: role of 'alice' must be one of device, user, admin"),
        ({"keepalive": "30"}, "modules.mqtt.keepalive has the wrong type: str"),
        ({"inflight": True}, "modules.mqtt.inflight has the wrong type: bool"),
        ({"event_prefixes": ["chat.", 3]}, "modules.mqtt.event_prefixes must be a list of strings"),
    ],
)
def test_bad_setting_is_refused_with_its_key(conf: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest) as info:
        BridgeConfig.from_mapping("pi", conf)
    assert info.value.message.startswith(message)


def test_tls_context_loads_ca_and_skips_hostname_check_when_insecure(tmp_path: Any) -> None:
    ctx = MqttSettings(url="mqtts://h", tls_insecure=True).tls_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname is False
    assert MqttSettings(url="mqtts://h").tls_context().check_hostname is True
