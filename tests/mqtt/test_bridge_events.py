"""Hub events out to MQTT subscribers, and the node's retained status."""

from __future__ import annotations

import json

from bus.mqtt_bridge import MqttBridge
from daemon.hub import Hub
from tests.mqtt.broker import Mosquitto
from tests.mqtt.conftest import NODE, bridge_config
from tests.mqtt.helpers import collector

EV = f"enigma/{NODE}/event"
STATUS = f"enigma/{NODE}/status"


async def test_event_reaches_subscriber_as_json_envelope(broker: Mosquitto, hub: Hub, bridge: MqttBridge) -> None:
    async with collector(broker, f"{EV}/#") as c:
        hub.publish("module.state", {"name": "llm", "state": "active"})
        await c.wait_for(lambda: bool(c.messages))
    msg = c.messages[0]
    assert msg.topic.value == f"{EV}/module/state"
    env = json.loads(msg.payload)
    assert env["kind"] == "event"
    assert env["topic"] == "module.state"
    assert env["body"] == {"name": "llm", "state": "active"}
    assert isinstance(env["id"], str)
    assert isinstance(env["ts"], float)


async def test_events_arrive_in_publish_order(broker: Mosquitto, hub: Hub, bridge: MqttBridge) -> None:
    async with collector(broker, f"{EV}/#") as c:
        for i in range(500):
            hub.publish("test.seq", {"n": i})
        await c.wait_for(lambda: len(c.messages) == 500)
    assert [json.loads(m.payload)["body"]["n"] for m in c.messages] == list(range(500))


async def test_bytes_in_event_body_become_base64(broker: Mosquitto, hub: Hub, bridge: MqttBridge) -> None:
    async with collector(broker, f"{EV}/#") as c:
        hub.publish("test.bytes", {"raw": b"\x00\xff"})
        await c.wait_for(lambda: bool(c.messages))
    assert json.loads(c.messages[0].payload)["body"] == {"raw": "AP8="}


async def test_event_filter_sends_only_configured_prefixes(broker: Mosquitto, hub: Hub) -> None:
    bridge = MqttBridge(hub, bridge_config(broker, event_prefixes=["robot."]))
    await bridge.start(wait=10)
    try:
        async with collector(broker, f"{EV}/#") as c:
            hub.publish("chat.message", {"text": "private"})
            hub.publish("robot.state", {"id": "r1"})
            await c.wait_for(lambda: bool(c.messages))
        assert [m.topic.value for m in c.messages] == [f"{EV}/robot/state"]
    finally:
        await bridge.close()


async def test_heartbeats_and_robot_telemetry_are_excluded_by_default(
    broker: Mosquitto, hub: Hub, bridge: MqttBridge
) -> None:
    async with collector(broker, f"{EV}/#") as c:
        hub.publish("sys.heartbeat", {"ts": 1})
        hub.publish("robot.telemetry", {"id": "r1"})
        hub.publish("sys.other", {})
        await c.wait_for(lambda: bool(c.messages))
    assert [m.topic.value for m in c.messages] == [f"{EV}/sys/other"]


async def test_qos_follows_topic_class(broker: Mosquitto, hub: Hub) -> None:
    bridge = MqttBridge(hub, bridge_config(broker, qos_events=1, event_qos={"sensor.": 0}))
    await bridge.start(wait=10)
    try:
        async with collector(broker, f"{EV}/#", qos=2) as c:
            hub.publish("sensor.reading", {"x": 1})
            hub.publish("robot.state", {"x": 2})
            await c.wait_for(lambda: len(c.messages) == 2)
        assert sorted((m.topic.value, m.qos) for m in c.messages) == [
            (f"{EV}/robot/state", 1),
            (f"{EV}/sensor/reading", 0),
        ]
    finally:
        await bridge.close()


async def test_wildcard_characters_in_hub_topic_never_reach_mqtt(
    broker: Mosquitto, hub: Hub, bridge: MqttBridge
) -> None:
    async with collector(broker, f"{EV}/#") as c:
        hub.publish("odd.+#/name", {})
        await c.wait_for(lambda: bool(c.messages))
    assert c.messages[0].topic.value == f"{EV}/odd/___name"


async def test_status_is_retained_online_while_connected(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, STATUS) as c:
        await c.wait_for(lambda: bool(c.messages))
    msg = c.messages[0]
    assert msg.retain
    status = json.loads(msg.payload)
    assert status["state"] == "online"
    assert status["node_id"] == NODE
    assert status["boot_id"] == bridge.boot_id


async def test_close_leaves_retained_offline_status(broker: Mosquitto, bridge: MqttBridge) -> None:
    await bridge.close()
    async with collector(broker, STATUS) as c:
        await c.wait_for(lambda: bool(c.messages))
    assert c.messages[0].retain
    assert json.loads(c.messages[0].payload)["state"] == "offline"
