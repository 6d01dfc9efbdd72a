"""Home Assistant discovery: off by default; when on, retained configs that point at topics we really publish."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bus.mqtt_bridge import MqttBridge
from bus.mqtt_ha import attach_discovery, robot_discovery
from bus.mqtt_link import MqttSettings
from clients.robot.drivers.sim import SimDriver
from clients.robot.node import RobotNode
from daemon.hub import Hub
from daemon.module import ModuleContext
from daemon.modules.robots.module import RobotsModule
from tests.mqtt.broker import Mosquitto
from tests.mqtt.conftest import NODE, bridge_config
from tests.mqtt.helpers import collector


async def test_no_discovery_configs_by_default(broker: Mosquitto, bridge: MqttBridge) -> None:
    async with collector(broker, "homeassistant/#", f"enigma/{NODE}/status") as c:
        await c.wait_for(lambda: bool(c.on(f"enigma/{NODE}/status")))  # retained: all retained ones came with it
    assert [m.topic.value for m in c.messages] == [f"enigma/{NODE}/status"]


async def test_daemon_appears_as_device_with_status_and_last_answer(broker: Mosquitto, hub: Hub) -> None:
    bridge = MqttBridge(hub, bridge_config(broker, ha_discovery=True))
    attach_discovery(bridge)
    await bridge.start(wait=10)
    try:
        assert await bridge.link.drain(10)
        async with collector(broker, "homeassistant/#") as c:
            await c.wait_for(lambda: len(c.messages) == 2)
    finally:
        await bridge.close()
    configs = {m.topic.value: json.loads(m.payload) for m in c.messages}
    assert all(m.retain for m in c.messages)
    status = configs[f"homeassistant/binary_sensor/enigma_{NODE}/status/config"]
    assert status["state_topic"] == f"enigma/{NODE}/status"
    assert (status["payload_on"], status["payload_off"], status["device_class"]) == (
        "online",
        "offline",
        "connectivity",
    )
    answer = configs[f"homeassistant/sensor/enigma_{NODE}/last_answer/config"]
    assert answer["state_topic"] == f"enigma/{NODE}/event/chat/message"
    assert answer["device"]["identifiers"] == [f"enigma_{NODE}"]


def test_robot_device_has_buttons_wired_to_its_topics() -> None:
    configs = {t: json.loads(p) for t, p in robot_discovery("r1")}
    stop = configs["homeassistant/button/enigma_robot_r1/stop/config"]
    assert (stop["command_topic"], json.loads(stop["payload_press"])) == ("enigma/robot/r1/cmd", {"action": "stop"})
    home = configs["homeassistant/button/enigma_robot_r1/home/config"]
    assert json.loads(home["payload_press"]) == {"action": "home"}
    assert configs["homeassistant/button/enigma_robot_r1/estop/config"]["command_topic"] == "enigma/robot/r1/estop"
    battery = configs["homeassistant/sensor/enigma_robot_r1/battery/config"]
    assert (battery["state_topic"], battery["unit_of_measurement"]) == ("enigma/robot/r1/telemetry", "%")


async def test_robots_module_publishes_discovery_for_each_robot_seen(broker: Mosquitto, tmp_path: Path) -> None:
    config = RobotsModule.check_config({"broker": broker.url, "ha_discovery": True})
    ctx = ModuleContext(Hub(), config, tmp_path, "n1", logging.getLogger("t"))
    module = RobotsModule(ctx)
    await module.load()
    node = RobotNode("r9", SimDriver(), MqttSettings(url=broker.url), rate=0, autorun=False)
    try:
        async with collector(broker, "homeassistant/button/enigma_robot_r9/+/config") as c:
            await node.start(wait=10)
            await c.wait_for(lambda: len(c.messages) == 3, what="three buttons")
        # the HA stop button's payload is a command the robot accepts
        async with collector(broker, "enigma/robot/r9/reply") as replies:
            stop = json.loads(c.json_on("homeassistant/button/enigma_robot_r9/stop/config")[0]["payload_press"])
            await replies.client.publish("enigma/robot/r9/cmd", json.dumps(stop).encode(), qos=1)
            await replies.wait_for(lambda: bool(replies.messages))
        assert replies.json_on("enigma/robot/r9/reply")[0]["ok"] is True
    finally:
        await node.close()
        await module.unload()
        ctx.undo_all()
