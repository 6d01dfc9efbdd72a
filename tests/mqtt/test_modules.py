"""The ``mqtt`` and ``robots`` daemon modules on an in-process hub: load errors, robot tracking, command paths."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus.errors import BadRequest, NotFound, Timeout, Unavailable
from bus.mqtt_link import MqttSettings
from bus.service import Call, Caller
from clients.robot.drivers.sim import SimDriver
from clients.robot.node import RobotNode
from daemon.hub import Hub
from daemon.module import Module, ModuleContext
from daemon.modules.mqtt.module import MqttModule
from daemon.modules.robots.module import RobotsModule
from tests.mqtt.broker import Mosquitto, free_port
from tests.mqtt.helpers import collector

ADMIN = Caller("local", "test", "admin")


def ctx(hub: Hub, config: dict[str, Any], tmp_path: Path, module: type[Module] = MqttModule) -> ModuleContext:
    """The context the manager would give ``module``: its table checked and completed by its schema."""
    return ModuleContext(hub, module.check_config(config), tmp_path, "n1", logging.getLogger("test"))


async def rpc(hub: Hub, method: str, body: dict[str, Any]) -> dict[str, Any]:
    return (await hub.dispatch(Call("x", method, body, ADMIN))).body


class Events:
    def __init__(self, hub: Hub, prefix: str) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        hub.add_listener(prefix, self._on)

    def _on(self, topic: str, body: dict[str, Any]) -> None:
        self.items.append((topic, body))
        self.changed.set()

    async def wait_for(self, pred: Any, within: float = 10.0) -> None:
        async def loop() -> None:
            while not pred(self.items):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), within)


async def test_mqtt_module_fails_to_load_when_no_broker_answers(tmp_path: Path) -> None:
    port = free_port()
    module = MqttModule(ctx(Hub(), {"broker": f"mqtt://127.0.0.1:{port}", "connect_timeout": 0.3}, tmp_path))
    with pytest.raises(Unavailable, match=rf"no MQTT broker answered at 127\.0\.0\.1:{port} within 0\.3s"):
        await module.load()


async def test_mqtt_module_refuses_a_bad_setting_by_name(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match=r"^modules\.mqtt\.qos_rpc must be 0, 1 or 2, got 5$"):
        ctx(Hub(), {"qos_rpc": 5}, tmp_path)


async def test_mqtt_module_reports_broker_and_stats(broker: Mosquitto, tmp_path: Path) -> None:
    module = MqttModule(ctx(Hub(), {"broker": broker.url}, tmp_path))
    await module.load()
    try:
        info = module.info()
        assert info["broker"] == f"mqtt://127.0.0.1:{broker.port}"
        assert info["connected"] is True
        assert info["node_id"] == "n1"
    finally:
        await module.unload()
    assert module.info() == {}


@pytest.fixture
async def robots(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[tuple[Hub, RobotsModule]]:
    hub = Hub()
    module = RobotsModule(ctx(hub, {"broker": broker.url, "command_timeout": 0.5}, tmp_path, RobotsModule))
    await module.load()
    try:
        yield hub, module
    finally:
        await module.unload()
        module.ctx.undo_all()


async def test_robot_announcement_becomes_state_event_and_list_entry(
    broker: Mosquitto, robots: tuple[Hub, RobotsModule]
) -> None:
    hub, _ = robots
    events = Events(hub, "robot.")
    node = RobotNode("r5", SimDriver(), MqttSettings(url=broker.url), rate=0, autorun=False)
    await node.start(wait=10)
    try:
        await events.wait_for(lambda items: any(t == "robot.state" and b["state"] == "idle" for t, b in items))
        listed = await rpc(hub, "robot.list", {})
        assert [(r["id"], r["online"], r["state"], r["driver"]) for r in listed["robots"]] == [
            ("r5", True, "idle", "sim")
        ]
        state = await rpc(hub, "robot.state", {"id": "r5"})
        assert "move" in state["announcement"]["actions"]
    finally:
        await node.close()
    await events.wait_for(lambda items: any(t == "robot.state" and not b["online"] for t, b in items))


async def test_telemetry_becomes_robot_telemetry_events(broker: Mosquitto, robots: tuple[Hub, RobotsModule]) -> None:
    hub, _ = robots
    events = Events(hub, "robot.telemetry")
    node = RobotNode("r6", SimDriver(), MqttSettings(url=broker.url), rate=5, autorun=False)
    await node.start(wait=10)
    try:
        node.step(node.clock())
        await events.wait_for(lambda items: len(items) >= 1)
        topic, body = events.items[0]
        assert topic == "robot.telemetry"
        assert body["id"] == "r6"
        assert body["pose"] == {"x": 0.0, "y": 0.0, "heading": 0.0}
    finally:
        await node.close()


async def test_command_to_unknown_robot_is_not_found(robots: tuple[Hub, RobotsModule]) -> None:
    hub, _ = robots
    with pytest.raises(NotFound, match=r"no robot 'ghost' has announced itself \(known: none\)"):
        await rpc(hub, "robot.command", {"id": "ghost", "action": "stop"})


async def test_command_to_offline_robot_is_unavailable(broker: Mosquitto, robots: tuple[Hub, RobotsModule]) -> None:
    hub, _ = robots
    events = Events(hub, "robot.state")
    async with collector(broker) as c:
        await c.client.publish("enigma/robot/gone/status", b'{"state": "offline"}', qos=1, retain=True)
    await events.wait_for(lambda items: any(b["id"] == "gone" for _, b in items))
    with pytest.raises(Unavailable, match=r"robot 'gone' is offline"):
        await rpc(hub, "robot.command", {"id": "gone", "action": "stop"})


async def test_silent_robot_times_out(broker: Mosquitto, robots: tuple[Hub, RobotsModule]) -> None:
    hub, _ = robots
    events = Events(hub, "robot.state")
    async with collector(broker) as c:  # a robot that announces itself but never answers
        await c.client.publish("enigma/robot/mute/status", b'{"state": "online"}', qos=1, retain=True)
    await events.wait_for(lambda items: any(b["id"] == "mute" and b["online"] for _, b in items))
    with pytest.raises(Timeout, match=r"robot 'mute' did not answer 'stop' within 0\.5s"):
        await rpc(hub, "robot.command", {"id": "mute", "action": "stop"})


async def test_estop_all_goes_to_the_global_estop_topic(broker: Mosquitto, robots: tuple[Hub, RobotsModule]) -> None:
    hub, _ = robots
    async with collector(broker, "enigma/robot/all/estop") as c:
        assert await rpc(hub, "robot.command", {"id": "all", "action": "estop"}) == {"sent": "enigma/robot/all/estop"}
        await c.wait_for(lambda: bool(c.messages))


async def test_command_params_may_not_override_id_or_action(
    broker: Mosquitto, robots: tuple[Hub, RobotsModule]
) -> None:
    hub, _ = robots
    events = Events(hub, "robot.state")
    async with collector(broker) as c:
        await c.client.publish("enigma/robot/p1/status", b'{"state": "online"}', qos=1, retain=True)
    await events.wait_for(lambda items: any(b["id"] == "p1" and b["online"] for _, b in items))
    with pytest.raises(BadRequest, match=r"params may not contain 'id' or 'action'"):
        await rpc(hub, "robot.command", {"id": "p1", "action": "stop", "params": {"action": "move"}})
