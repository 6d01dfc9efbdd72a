from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bus.errors import NotFound
from bus.mqtt_bridge import BridgeConfig, MqttBridge
from bus.mqtt_link import MqttSettings
from bus.service import Call
from daemon.hub import Hub
from tests.mqtt.broker import Mosquitto

NODE = "testnode"


def make_hub() -> Hub:
    """A hub with a few handlers that exercise every answer shape the bridge must carry."""
    hub = Hub()

    async def status(call: Call) -> dict[str, Any]:
        return {"node_id": NODE, "caller": call.caller.transport, "role": call.caller.role}

    async def echo(call: Call) -> dict[str, Any]:
        return {"echo": call.body}

    async def count(call: Call) -> dict[str, Any]:
        n = int(call.body.get("n", 3))
        for i in range(n):
            await call.emit({"i": i})
        return {"count": n}

    async def admin_only(call: Call) -> dict[str, Any]:
        return {"secret": 42}

    async def missing(call: Call) -> dict[str, Any]:
        raise NotFound(f"no such thing: {call.body.get('name')}")

    async def forever(call: Call) -> dict[str, Any]:
        await call.emit({"started": True})
        await asyncio.Event().wait()
        return {}

    hub.register("sys.status", status, access="device")
    hub.register("test.echo", echo, access="device")
    hub.register("test.count", count, access="device", stream=True)
    hub.register("test.admin", admin_only, access="admin")
    hub.register("test.missing", missing, access="device")
    hub.register("test.forever", forever, access="device", stream=True)
    return hub


@pytest.fixture
def hub() -> Hub:
    return make_hub()


def bridge_config(broker: Mosquitto, **overrides: Any) -> BridgeConfig:
    conf = BridgeConfig(node_id=NODE, mqtt=MqttSettings(url=broker.url, client_id="enigmad-test", backoff_max=0.5))
    for key, value in overrides.items():
        setattr(conf, key, value)
    return conf


@pytest.fixture
async def bridge(broker: Mosquitto, hub: Hub) -> AsyncIterator[MqttBridge]:
    b = MqttBridge(hub, bridge_config(broker, roles={"alice": "admin"}))
    await b.start(wait=10)
    try:
        yield b
    finally:
        await b.close()
