"""``enigma robots list|send|watch`` against a real enigmad with the robots module and a sim robot on mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bus.mqtt_link import MqttSettings
from bus.topics import ROBOT_STATE
from clients.robot.drivers.sim import SimDriver
from clients.robot.node import RobotNode
from clients.sdk import Client
from tests.mqtt.broker import Mosquitto
from tests.mqtt.helpers import collector

ENIGMA = str(Path(sys.executable).parent / "enigma")


@pytest.fixture
async def setup(
    broker: Mosquitto, daemon_factory: Callable[..., Any], tmp_path: Path
) -> AsyncIterator[tuple[Any, RobotNode]]:
    conf = f'[modules]\nautoload = ["robots"]\n\n[modules.robots]\nbroker = "{broker.url}"\n'
    d = await asyncio.to_thread(daemon_factory, config=conf)
    robot = RobotNode("cli1", SimDriver(), MqttSettings(url=broker.url), rate=5)
    # The module learns of the robot through the broker, not from us: wait for its robot.state event that says
    # the robot is online with its announcement (subscribed before the robot starts, so it cannot be missed).
    async with Client(d.rpc, d.events, timeout=10.0) as client, client.subscribe(ROBOT_STATE) as states:
        await states.live()
        await robot.start(wait=10)
        try:
            async with asyncio.timeout(30):
                async for ev in states:
                    if ev.body["id"] == "cli1" and ev.body["online"] and ev.body.get("driver") == "sim":
                        break
        except BaseException:
            await robot.close()
            raise
    try:
        yield d, robot
    finally:
        await robot.close()


async def enigma(d: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env["NO_COLOR"] = "1"
    cmd = [ENIGMA, "--rpc", d.rpc, "--events", d.events, *args]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=30, env=env)


async def _listed(d: Any) -> list[dict[str, Any]]:
    out = await enigma(d, "robots", "list", "--json")
    assert out.returncode == 0, out.stderr
    robots: list[dict[str, Any]] = json.loads(out.stdout)["robots"]
    return robots


async def test_list_shows_the_robot(setup: tuple[Any, RobotNode]) -> None:
    d, _ = setup
    robots = await _listed(d)
    assert [(r["id"], r["online"], r["driver"]) for r in robots] == [("cli1", True, "sim")]
    human = await enigma(d, "robots", "list")
    assert "cli1" in human.stdout
    assert "100%" in human.stdout or "99%" in human.stdout


async def test_send_move_is_accepted(setup: tuple[Any, RobotNode]) -> None:
    d, robot = setup
    out = await enigma(d, "robots", "send", "cli1", "move", "speed=0.2", "distance=1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cli1 accepted move"
    assert robot.controller.goal is not None  # a metre at 0.2 m/s takes five seconds
    assert robot.controller.goal.kind == "distance"


async def test_send_out_of_range_prints_the_robots_refusal(setup: tuple[Any, RobotNode]) -> None:
    d, robot = setup
    out = await enigma(d, "robots", "send", "cli1", "move", "speed=3", "distance=1")
    assert out.returncode == 1
    assert "move.speed=3 is out of range [-0.5, 0.5]" in out.stderr
    assert robot.controller.goal is None


async def test_send_all_estop_halts_the_robot(broker: Mosquitto, setup: tuple[Any, RobotNode]) -> None:
    d, robot = setup
    async with collector(broker, "enigma/robot/cli1/state") as c:
        out = await enigma(d, "robots", "send", "all", "estop")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "e-stop sent to enigma/robot/all/estop"
        await c.wait_for(lambda: any(s["state"] == "estop" for s in c.json_on("enigma/robot/cli1/state")))
    assert robot.controller.estopped


async def test_watch_prints_state_changes(broker: Mosquitto, setup: tuple[Any, RobotNode]) -> None:
    d, _ = setup
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    proc = await asyncio.create_subprocess_exec(
        ENIGMA, "--rpc", d.rpc, "--events", d.events, "robots", "watch", "cli1", "--json", "-v",
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert proc.stdout is not None
        note = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert note.decode().startswith("enigma: watching cli1")
        async with collector(broker) as c:
            await c.client.publish("enigma/robot/cli1/estop", b"{}", qos=1)
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert line["topic"] == "robot.state"
        assert (line["body"]["id"], line["body"]["state"]) == ("cli1", "estop")
    finally:
        proc.terminate()
        await proc.wait()
