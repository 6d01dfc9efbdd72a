"""The sim robot driven over a real broker: commands, e-stop, dead-man, refusals, announcements."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clients.robot.node import RobotNode
from tests.mqtt.broker import Mosquitto
from tests.mqtt.helpers import Collector, collector, request_props
from tests.robot.conftest import ManualClock, make_node

R = "enigma/robot/r1"
ROOT = Path(__file__).resolve().parents[2]
BIG = b'{"action": "move", "speed": 0.2, "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'


def step(robot: RobotNode, clock: ManualClock, seconds: float) -> None:
    for _ in range(round(seconds / robot.limits.tick)):
        clock.t += robot.limits.tick
        robot.step(clock.t)


async def send(c: Collector, cmd: dict[str, object] | bytes, topic: str = f"{R}/cmd") -> dict[str, object]:
    """Publish a command and wait for the robot's reply on its reply topic."""
    before = len(c.on(f"{R}/reply"))
    payload = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
    await c.client.publish(topic, payload, qos=1)
    await c.wait_for(lambda: len(c.on(f"{R}/reply")) > before, what="the robot's reply")
    reply: dict[str, object] = c.json_on(f"{R}/reply")[before]
    return reply


async def test_robot_announces_status_and_retained_state(broker: Mosquitto, robot: RobotNode) -> None:
    async with collector(broker, f"{R}/status", f"{R}/state") as c:
        await c.wait_for(lambda: len(c.messages) == 2)
    assert c.json_on(f"{R}/status") == [{"id": "r1", "state": "online"}]
    state = c.json_on(f"{R}/state")[0]
    assert all(m.retain for m in c.messages)
    assert (state["id"], state["driver"], state["state"]) == ("r1", "sim", "idle")
    assert {"move", "turn", "stop", "home", "gripper", "speed", "beep"} <= set(state["actions"])
    assert state["limits"]["deadman"] == 0.5


async def test_move_command_moves_the_robot(broker: Mosquitto, robot: RobotNode, clock: ManualClock) -> None:
    async with collector(broker, f"{R}/reply") as c:
        reply = await send(c, {"id": "m1", "action": "move", "speed": 0.4, "distance": 0.5})
    assert reply == {"id": "m1", "ok": True, "action": "move", "result": {}}
    step(robot, clock, 3.0)
    assert robot.driver.x == pytest.approx(0.5, abs=0.01)  # type: ignore[attr-defined]
    assert robot.controller.state == "idle"


async def test_estop_halts_within_one_control_tick(broker: Mosquitto, robot: RobotNode, clock: ManualClock) -> None:
    async with collector(broker, f"{R}/reply", f"{R}/state") as c:
        await send(c, {"action": "drive", "linear": 0.5})
        for _ in range(5):
            step(robot, clock, 0.2)
            await send(c, {"action": "ping"})
        assert robot.driver.left == pytest.approx(0.5)  # type: ignore[attr-defined]
        await c.client.publish(f"{R}/estop", b"", qos=1)
        await c.wait_for(lambda: any(s["state"] == "estop" for s in c.json_on(f"{R}/state")), what="estop state")
    assert (robot.driver.left, robot.driver.right) == (0.0, 0.0)  # type: ignore[attr-defined]
    x = robot.driver.x  # type: ignore[attr-defined]
    step(robot, clock, robot.limits.tick)
    assert robot.driver.x == x  # type: ignore[attr-defined]


async def test_motion_refused_after_estop_until_reset(broker: Mosquitto, robot: RobotNode) -> None:
    async with collector(broker, f"{R}/reply", f"{R}/state") as c:
        await c.client.publish(f"{R}/estop", b"{}", qos=1)
        await c.wait_for(lambda: any(s["state"] == "estop" for s in c.json_on(f"{R}/state")))
        refused = await send(c, {"id": "x", "action": "move", "speed": 0.1, "distance": 1})
        released = await send(c, {"action": "reset"})
    assert refused["ok"] is False
    assert refused["error"] == {
        "code": "conflict",
        "message": f"emergency stop is engaged (e-stop on {R}/estop); send reset first",
    }
    assert released["result"] == {"released": True}


async def test_global_estop_halts_every_robot(broker: Mosquitto, robot: RobotNode, clock: ManualClock) -> None:
    other = make_node(broker, "r2", clock)
    await other.start(wait=10)
    try:
        async with collector(broker, "enigma/robot/+/state") as c:
            await c.client.publish("enigma/robot/all/estop", b"", qos=1)
            await c.wait_for(
                lambda: (
                    {json.loads(m.payload)["id"] for m in c.messages if json.loads(m.payload)["state"] == "estop"}
                    == {"r1", "r2"}
                ),
                what="both robots in estop",
            )
        assert robot.controller.estopped
        assert other.controller.estopped
    finally:
        await other.close()


async def test_deadman_stops_robot_when_commands_stop(broker: Mosquitto, robot: RobotNode, clock: ManualClock) -> None:
    async with collector(broker, f"{R}/reply") as c:
        await send(c, {"action": "drive", "linear": 0.3})
    step(robot, clock, 0.4)
    assert robot.controller.goal is not None
    step(robot, clock, 1.0)
    assert robot.controller.deadman_trips == 1
    assert (robot.driver.left, robot.driver.right) == (0.0, 0.0)  # type: ignore[attr-defined]
    assert robot.controller.state == "idle"


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b'{"id": "n", "action": "move", "speed": NaN, "duration": 1}', "bad_request",
         "move.speed must be a finite number, got nan"),
        (b'{"id": "u", "action": "teleport"}', "bad_request", "unknown action 'teleport'"),
        (BIG, "too_large", f"command of {len(BIG)} bytes exceeds the limit of 65536"),
    ],
    ids=["nan-speed", "unknown-action", "10MB-payload"],
)  # fmt: skip
async def test_bad_command_is_refused_and_never_moves(
    broker: Mosquitto, robot: RobotNode, clock: ManualClock, payload: bytes, code: str, message: str
) -> None:
    async with collector(broker, f"{R}/reply") as c:
        reply = await send(c, payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code  # type: ignore[index]
    assert reply["error"]["message"].startswith(message)  # type: ignore[index]
    step(robot, clock, 1.0)
    assert (robot.driver.x, robot.driver.y) == (0.0, 0.0)  # type: ignore[attr-defined]
    assert robot.controller.goal is None
    assert robot.rejected == 1


async def test_retained_command_found_at_connect_is_refused(broker: Mosquitto, clock: ManualClock) -> None:
    async with collector(broker, "enigma/robot/r3/reply") as c:
        cmd = b'{"id": "old", "action": "move", "speed": 0.2, "distance": 1}'
        await c.client.publish("enigma/robot/r3/cmd", cmd, qos=1, retain=True)
        node = make_node(broker, "r3", clock)
        await node.start(wait=10)
        try:
            await c.wait_for(lambda: bool(c.messages))
            assert c.json_on("enigma/robot/r3/reply") == [
                {"id": None, "ok": False,
                 "error": {"code": "bad_request", "message": "retained commands are refused: a command must be fresh"}},
            ]  # fmt: skip
            assert node.controller.goal is None
        finally:
            await node.close()


async def test_reply_goes_to_response_topic_with_correlation(broker: Mosquitto, robot: RobotNode) -> None:
    async with collector(broker, "ops/answers") as c:
        props = request_props("ops/answers", b"42")
        await c.client.publish(f"{R}/cmd", b'{"id": "g", "action": "gripper", "position": 1}', 1, properties=props)
        await c.wait_for(lambda: bool(c.messages))
    assert c.json_on("ops/answers") == [{"id": "g", "ok": True, "action": "gripper", "result": {"position": 1.0}}]
    assert c.messages[0].properties.CorrelationData == b"42"


async def test_telemetry_follows_the_configured_rate(broker: Mosquitto, robot: RobotNode, clock: ManualClock) -> None:
    async with collector(broker, f"{R}/telemetry", qos=0) as c:
        step(robot, clock, 2.0)  # 5 Hz for two seconds
        await c.wait_for(lambda: len(c.messages) >= 10)
        assert await robot.link.drain(5)
    assert len(c.messages) == 10
    t = c.json_on(f"{R}/telemetry")[-1]
    assert set(t) >= {"id", "pose", "wheels", "battery", "state", "estop"}


async def test_robot_process_leaves_offline_will_when_killed(broker: Mosquitto) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.robot", "--id", "proc1", "--broker", broker.url, "--rate", "0",
        cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        async with collector(broker, "enigma/robot/proc1/status") as c:
            await c.wait_for(lambda: any(json.loads(m.payload)["state"] == "online" for m in c.messages), 20)
            proc.kill()
            await proc.wait()
            await c.wait_for(lambda: json.loads(c.messages[-1].payload)["state"] == "offline", what="the last will")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_robot_process_refuses_an_unknown_driver() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.robot", "--id", "x", "--driver", "lego",
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().strip() == (
        "enigma-robot: cannot start driver 'lego': unknown driver 'lego' (known: gpio, serial, sim)"
    )
