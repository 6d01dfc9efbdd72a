"""``mqtt``: bridges the hub onto an MQTT broker (``bus.mqtt_bridge``), configured by ``[modules.mqtt]``.

Keys (all optional): ``broker`` (``mqtt://`` or ``mqtts://`` URL, default ``mqtt://127.0.0.1:1883``),
``username``, ``password``, ``ca_file``, ``cert_file``, ``key_file``, ``tls_insecure``, ``node_id`` (defaults to
the daemon's), ``event_prefixes``, ``exclude_prefixes``, ``qos_events``, ``event_qos`` (prefix → QoS),
``qos_rpc``, ``qos_status``, ``roles`` (MQTT username → role), ``default_role``, ``ha_discovery`` and the
limits ``queue_limit``, ``inflight``, ``max_request_bytes``, ``max_calls``, ``connect_timeout``.

Loading waits for the broker (``connect_timeout`` seconds, default 10) so that a wrong URL fails the load with
a clear error instead of a silent retry loop; after that the bridge reconnects by itself.
"""

from __future__ import annotations

from typing import Any

from bus.errors import BadRequest, Unavailable
from bus.mqtt_bridge import BridgeConfig, MqttBridge
from daemon.module import Module


class MqttModule(Module):
    name = "mqtt"
    description = "MQTT bridge: hub events to a broker, method calls from MQTT devices, retained node status."

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.bridge: MqttBridge | None = None

    async def load(self) -> None:
        conf = dict(self.ctx.config)
        timeout = conf.pop("connect_timeout", 10.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise BadRequest(f"modules.mqtt.connect_timeout must be a positive number, got {timeout!r}")
        config = BridgeConfig.from_mapping(self.ctx.node_id, conf)
        core = self.ctx.services.get("core")
        bridge = MqttBridge(self.ctx.hub, config, boot_id=getattr(core, "boot_id", None))
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
