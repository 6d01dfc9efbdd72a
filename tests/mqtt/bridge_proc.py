"""A bridge in its own process, so a test can kill it without a clean disconnect (``python -m`` entry)."""

from __future__ import annotations

import asyncio
import sys

from bus.mqtt_bridge import BridgeConfig, MqttBridge
from bus.mqtt_link import MqttSettings
from tests.mqtt.conftest import NODE, make_hub


async def main(url: str) -> None:
    bridge = MqttBridge(make_hub(), BridgeConfig(node_id=NODE, mqtt=MqttSettings(url=url, client_id="doomed")))
    await bridge.start(wait=10)
    assert await bridge.link.drain(10)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
