"""``mqtt``: bridges the hub onto an MQTT broker (``bus.mqtt_bridge``), configured by ``[modules.mqtt]``.

Keys (all optional): ``broker`` (``mqtt://`` or ``mqtts://`` URL, default ``mqtt://127.0.0.1:1883``),
``username``, ``password``, ``ca_file``, ``cert_file``, ``key_file``, ``tls_insecure``, ``node_id`` (defaults to
the daemon's), ``event_prefixes``, ``exclude_prefixes``, ``qos_events``, ``event_qos`` (prefix → QoS),
``qos_rpc``, ``qos_status``, ``roles`` (MQTT username → role), ``default_role``, ``ha_discovery`` and the
limits ``queue_limit``, ``inflight``, ``max_request_bytes``, ``max_calls``, ``connect_timeout``.

Loading waits for the broker (``connect_timeout`` seconds, default 10) so that a wrong URL fails the load with
a clear error instead of a silent retry loop; after that the bridge reconnects by itself. The types, limits and
defaults are ``CONFIG_SCHEMA``; the broker URL's form is checked when the bridge is built.
"""

from __future__ import annotations

from typing import Any, Final

from bus.errors import Unavailable
from bus.mqtt_bridge import DEFAULT_EXCLUDE, BridgeConfig, MqttBridge
from bus.service import ROLES
from daemon.module import Module
from daemon.services import Node

_STR: Final = {"type": "string"}
_QOS: Final = {"enum": [0, 1, 2], "default": 1}
_STRINGS: Final = {"type": "array", "items": _STR}
CONFIG_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "broker": {**_STR, "default": "mqtt://127.0.0.1:1883"},
        "client_id": _STR,  # default: enigmad-<node_id>
        "username": _STR,
        "password": _STR,
        "ca_file": _STR,
        "cert_file": _STR,
        "key_file": _STR,
        "tls_insecure": {"type": "boolean", "default": False},
        "keepalive": {"type": "integer", "minimum": 1, "default": 30},
        "queue_limit": {"type": "integer", "minimum": 1, "default": 10_000},
        "inflight": {"type": "integer", "minimum": 1, "default": 256},
        "node_id": _STR,  # default: the daemon's
        "event_prefixes": {**_STRINGS, "default": [""]},
        "exclude_prefixes": {**_STRINGS, "default": list(DEFAULT_EXCLUDE)},
        "qos_events": _QOS,
        "event_qos": {"type": "object", "additionalProperties": {"enum": [0, 1, 2]}, "default": {}},
        "qos_rpc": _QOS,
        "qos_status": _QOS,
        "roles": {"type": "object", "additionalProperties": {"enum": list(ROLES)}, "default": {}},
        "default_role": {"enum": list(ROLES), "default": "device"},
        "max_request_bytes": {"type": "integer", "minimum": 1, "default": 256 * 1024},
        "max_calls": {"type": "integer", "minimum": 1, "default": 64},
        "ha_discovery": {"type": "boolean", "default": False},
        "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 10.0},
    },
    "additionalProperties": False,
}


class MqttModule(Module):
    name = "mqtt"
    description = "MQTT bridge: hub events to a broker, method calls from MQTT devices, retained node status."
    config_schema = CONFIG_SCHEMA

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.bridge: MqttBridge | None = None

    async def load(self) -> None:
        conf = dict(self.ctx.config)
        timeout = conf.pop("connect_timeout")
        config = BridgeConfig.from_mapping(self.ctx.node_id, conf)
        node = self.ctx.services.find(Node)  # absent when the module runs on a bare hub (tests, tools)
        bridge = MqttBridge(self.ctx.hub, config, boot_id=node.boot_id if node is not None else None)
        if config.ha_discovery:
            from bus.mqtt_ha import attach_discovery

            attach_discovery(bridge)
        try:
            await bridge.start(wait=float(timeout))
        except Unavailable:
            await bridge.close(timeout=1.0)
            raise
        self.bridge = bridge

    async def unload(self) -> None:
        if self.bridge is not None:
            await self.bridge.close()
            self.bridge = None

    def info(self) -> dict[str, Any]:
        if self.bridge is None:
            return {}
        host, port, tls, *_ = self.bridge.config.mqtt.endpoint()
        return {
            "broker": f"{'mqtts' if tls else 'mqtt'}://{host}:{port}",
            "node_id": self.bridge.config.node_id,
            "connected": self.bridge.link.connected.is_set(),
            "stats": self.bridge.stats(),
        }
