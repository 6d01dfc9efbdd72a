from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus.mqtt_link import MqttSettings
from clients.robot.commands import Limits
from clients.robot.drivers.sim import SimDriver
from clients.robot.node import RobotNode
from tests.mqtt.broker import Mosquitto


class ManualClock:
    """The robot's clock in tests: time moves only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_node(broker: Mosquitto, robot_id: str, clock: ManualClock, **kw: object) -> RobotNode:
    settings = MqttSettings(url=broker.url, backoff_max=0.2)
    return RobotNode(robot_id, SimDriver(), settings, limits=Limits(deadman=0.5), clock=clock, autorun=False, **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def robot(broker: Mosquitto, clock: ManualClock) -> AsyncIterator[RobotNode]:
    node = make_node(broker, "r1", clock)
    await node.start(wait=10)
    assert await node.link.drain(10)
    try:
        yield node
    finally:
        await node.close()
