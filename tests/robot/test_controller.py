"""The control loop, stepped deterministically with explicit times: motion, limits, e-stop, dead-man."""

from __future__ import annotations

import math

import pytest

from clients.robot.commands import Command, CommandError, Limits
from clients.robot.controller import Controller
from clients.robot.drivers.sim import SimDriver

TICK = 0.02


class Rig:
    def __init__(self, limits: Limits | None = None, **sim: float) -> None:
        self.sim = SimDriver(**sim)
        self.t = 0.0
        self.ctl = Controller(self.sim, limits or Limits(), self.t)

    def send(self, action: str, **params: float) -> dict[str, object]:
        return self.ctl.command(Command(action, params), self.t)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / TICK)):
            self.t += TICK
            self.ctl.tick(self.t)

    def run_until_idle(self, limit: float = 60.0) -> None:
        while self.ctl.state != "idle":
            assert self.t < limit, "robot never came to rest"
            self.run(TICK)


def test_move_by_distance_ends_at_that_distance_and_rests() -> None:
    rig = Rig()
    rig.send("move", speed=0.4, distance=1.0)
    rig.run_until_idle()
    assert rig.sim.x == pytest.approx(1.0, abs=0.01)
    assert rig.sim.y == pytest.approx(0.0, abs=1e-9)
    assert (rig.sim.left, rig.sim.right) == (0.0, 0.0)


def test_backwards_move_goes_backwards() -> None:
    rig = Rig()
    rig.send("move", speed=-0.2, distance=0.5)
    rig.run_until_idle()
    assert rig.sim.x == pytest.approx(-0.5, abs=0.01)


def test_turn_by_angle_ends_at_that_heading() -> None:
    rig = Rig()
    rig.send("turn", rate=1.0, angle=math.pi / 2)
    rig.run_until_idle()
    assert rig.sim.heading == pytest.approx(math.pi / 2, abs=0.02)
    assert math.hypot(rig.sim.x, rig.sim.y) == pytest.approx(0.0, abs=1e-9)


def test_acceleration_is_limited_per_tick() -> None:
    rig = Rig(Limits(max_accel=1.0))
    rig.send("move", speed=0.5, duration=5)
    rig.run(TICK)
    assert rig.sim.left == pytest.approx(1.0 * TICK)
    rig.run(TICK)
    assert rig.sim.left == pytest.approx(2 * 1.0 * TICK)


def test_speed_cap_limits_wheel_speed() -> None:
    rig = Rig()
    rig.send("speed", max=0.1)
    rig.send("move", speed=0.5, duration=3)
    rig.run(2.0)
    assert max(abs(rig.sim.left), abs(rig.sim.right)) == pytest.approx(0.1)


def test_estop_zeroes_wheels_at_once_and_no_further_motion() -> None:
    rig = Rig()
    rig.send("move", speed=0.5, duration=10)
    rig.run(1.0)
    assert rig.sim.left == pytest.approx(0.5)
    rig.ctl.estop("test")
    assert (rig.sim.left, rig.sim.right) == (0.0, 0.0)
    x = rig.sim.x
    rig.run(TICK)
    assert rig.sim.x == x
    assert rig.ctl.state == "estop"


def test_motion_is_refused_while_estop_latched_until_reset() -> None:
    rig = Rig()
    rig.ctl.estop("test")
    with pytest.raises(CommandError) as info:
        rig.send("move", speed=0.1, distance=1)
    assert (info.value.code, info.value.message) == (
        "conflict",
        "emergency stop is engaged (test); send reset first",
    )
    assert rig.send("reset") == {"released": True}
    rig.send("move", speed=0.1, distance=0.1)
    rig.run_until_idle()
    assert rig.sim.x == pytest.approx(0.1, abs=0.01)


def test_deadman_stops_open_ended_drive_when_commands_stop() -> None:
    rig = Rig(Limits(deadman=0.5))
    rig.send("drive", linear=0.3)
    rig.run(0.4)
    assert rig.ctl.goal is not None
    rig.run(0.2)  # 0.6 s since the last command
    assert rig.ctl.goal is None
    assert rig.ctl.deadman_trips == 1
    rig.run_until_idle(limit=5.0)
    assert (rig.sim.left, rig.sim.right) == (0.0, 0.0)


def test_ping_keeps_the_deadman_from_tripping() -> None:
    rig = Rig(Limits(deadman=0.5))
    rig.send("drive", linear=0.3)
    for _ in range(5):
        rig.run(0.4)
        rig.send("ping")
    assert rig.ctl.deadman_trips == 0
    assert rig.sim.left == pytest.approx(0.3)


def test_bounded_move_is_not_cut_by_the_deadman() -> None:
    rig = Rig(Limits(deadman=0.5))
    rig.send("move", speed=0.2, distance=0.6)
    rig.run_until_idle()
    assert rig.ctl.deadman_trips == 0
    assert rig.sim.x == pytest.approx(0.6, abs=0.01)


def test_home_returns_to_the_start_pose() -> None:
    rig = Rig()
    rig.send("move", speed=0.4, distance=1.0)
    rig.run_until_idle()
    rig.send("turn", rate=1.0, angle=math.pi / 2)
    rig.run_until_idle()
    rig.send("move", speed=0.4, distance=0.5)
    rig.run_until_idle()
    rig.send("home")
    rig.run_until_idle()
    assert rig.sim.x == pytest.approx(0.0, abs=0.02)
    assert rig.sim.y == pytest.approx(0.0, abs=0.02)
    assert rig.sim.heading == pytest.approx(0.0, abs=0.02)


def test_empty_battery_refuses_motion() -> None:
    rig = Rig(battery=0.0)
    with pytest.raises(CommandError) as info:
        rig.send("move", speed=0.1, distance=1)
    assert (info.value.code, info.value.message) == ("unavailable", "cannot move: battery empty")


def test_battery_drains_faster_when_moving() -> None:
    idle, moving = Rig(), Rig()
    moving.send("move", speed=0.5, duration=5)
    idle.run(5.0)
    moving.run(5.0)
    assert 1.0 > idle.sim.battery > moving.sim.battery


def test_custom_action_reaches_the_driver() -> None:
    rig = Rig()
    assert rig.send("beep", times=3) == {"beeps": 3}
    assert rig.sim.beeps == 3
