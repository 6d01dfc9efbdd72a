"""The control loop: turns validated commands into wheel speeds, with the robot's safety rules built in.

- E-stop: ``estop()`` zeroes the wheels at once (not at the next tick) and latches until ``reset``; while
  latched every motion command is refused.
- Limits: speeds are capped per wheel (the speed cap scales a curve down rather than distorting it) and each
  wheel's speed changes by at most ``max_accel·dt`` per tick; only the e-stop skips the ramp.
- Dead-man: open-ended motion (``drive``, or ``move``/``turn`` without a distance, angle or duration) stops
  when no command has arrived for ``limits.deadman`` seconds. Bounded motion ends by itself.

Time is passed in: ``tick(now)`` advances the robot to ``now``. The robot process calls it on a wall clock;
tests call it with the times they choose, so every behaviour is stepped deterministically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from clients.robot.commands import Action, Command, CommandError, Limits, builtin_actions
from clients.robot.drivers.base import Driver, DriverError

MOTION = frozenset({"move", "turn", "drive", "home"})


@dataclass
class Goal:
    kind: str  # "velocity" (open-ended), "distance", "angle", "time", "home"
    linear: float = 0.0
    angular: float = 0.0
    remaining: float = math.inf  # metres, radians or seconds left, by kind
    phase: str = ""  # home: "face", "drive", "align"


def _wrap(angle: float) -> float:
    return math.atan2(math.sin(angle), math.cos(angle))


class Controller:
    def __init__(self, driver: Driver, limits: Limits, now: float) -> None:
        self.driver = driver
        self.limits = limits
        builtin = builtin_actions(limits)
        custom = driver.actions()
        clash = sorted(set(builtin) & set(custom))
        if clash:
            raise DriverError(f"driver {driver.name!r} redefines built-in action {clash[0]!r}")
        self.actions: dict[str, Action] = {**builtin, **custom}
        self.estopped = False
        self.estop_reason = ""
        self.speed_cap = limits.max_speed
        self.goal: Goal | None = None
        self.wheels = (0.0, 0.0)
        self.last_command = now
        self.last_tick = now
        self.deadman_trips = 0
        self.home = driver.pose()

    # -- commands ---------------------------------------------------------------------------------------------
    def estop(self, reason: str = "e-stop") -> None:
        """Halt now: wheels to zero without a ramp, motion dropped, latched until ``reset``."""
        self.driver.set_wheels(0.0, 0.0)
        self.wheels = (0.0, 0.0)
        self.goal = None
        self.estopped = True
        self.estop_reason = reason

    def halt(self) -> None:
        """Drop the current motion and decelerate within the acceleration limit."""
        self.goal = None

    def command(self, cmd: Command, now: float) -> dict[str, Any]:
        """Apply one validated command; raises ``CommandError`` when it cannot run in the current state."""
        self.last_command = now
        action, p = cmd.action, cmd.params
        if action == "ping":
            return {}
        if action == "stop":
            self.halt()
            return {}
        if action == "reset":
            was, self.estopped, self.estop_reason = self.estopped, False, ""
            return {"released": was}
        if action == "speed":
            self.speed_cap = p["max"]
            return {"max": self.speed_cap}
        if self.estopped:
            raise CommandError("conflict", f"emergency stop is engaged ({self.estop_reason}); send reset first")
        if action == "gripper":
            self._driver_call(self.driver.set_gripper, p["position"])
            return {"position": p["position"]}
        if action in MOTION:
            reason = self.driver.can_move()
            if reason is not None:
                raise CommandError("unavailable", f"cannot move: {reason}")
            self.goal = self._goal(action, p)
            return {}
        return self._driver_call(self.driver.custom, action, p) or {}

    def _driver_call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except DriverError as exc:
            raise CommandError("bad_request", str(exc)) from exc

    def _goal(self, action: str, p: dict[str, Any]) -> Goal:
        if action == "move":
            if "distance" in p:
                return Goal("distance", linear=p["speed"], remaining=p["distance"])
            if "duration" in p:
                return Goal("time", linear=p["speed"], remaining=p["duration"])
            return Goal("velocity", linear=p["speed"])
        if action == "turn":
            if "angle" in p:
                return Goal("angle", angular=p["rate"], remaining=p["angle"])
            if "duration" in p:
                return Goal("time", angular=p["rate"], remaining=p["duration"])
            return Goal("velocity", angular=p["rate"])
        if action == "drive":
            return Goal("velocity", linear=p.get("linear", 0.0), angular=p.get("angular", 0.0))
        if self.home is None or self.driver.pose() is None:
            raise CommandError("bad_request", f"home needs odometry, which the {self.driver.name} driver lacks")
        return Goal("home", phase="face")

    # -- the loop ---------------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Advance to ``now``: move the robot with the current wheel speeds, then choose the next ones."""
        dt = now - self.last_tick
        if dt <= 0:
            return
        self.last_tick = now
        self.driver.step(dt)
        left, right = self.wheels
        self._progress(dt, left, right)
        if self.estopped:
            self.driver.set_wheels(0.0, 0.0)
            self.wheels = (0.0, 0.0)
            return
        goal = self.goal
        if goal is not None and goal.kind == "velocity" and now - self.last_command > self.limits.deadman:
            self.goal = None
            self.deadman_trips += 1
        if self.goal is not None and self.driver.can_move() is not None:
            self.goal = None
        v, w = self._target()
        self._ramp_to(v, w, dt)

    def _progress(self, dt: float, left: float, right: float) -> None:
        goal = self.goal
        if goal is None:
            return
        if goal.kind == "distance":
            goal.remaining -= abs(left + right) / 2 * dt
        elif goal.kind == "angle":
            goal.remaining -= abs(right - left) / self.driver.wheel_base * dt
        elif goal.kind == "time":
            goal.remaining -= dt
        if goal.kind != "velocity" and goal.kind != "home" and goal.remaining <= 1e-6:
            self.goal = None

    def _target(self) -> tuple[float, float]:
        """Body velocity (v m/s, ω rad/s) wanted now, braking in time for bounded goals."""
        goal = self.goal
        if goal is None:
            return 0.0, 0.0
        a = self.limits.max_accel
        b = self.driver.wheel_base
        if goal.kind in ("velocity", "time"):
            return goal.linear, goal.angular
        if goal.kind == "distance":
            v = min(abs(goal.linear), math.sqrt(2 * a * max(goal.remaining, 0.0)))
            return math.copysign(v, goal.linear), 0.0
        if goal.kind == "angle":
            alpha = 2 * a / b  # angular acceleration when the wheels accelerate in opposite directions
            w = min(abs(goal.angular), math.sqrt(2 * alpha * max(goal.remaining, 0.0)))
            return 0.0, math.copysign(w, goal.angular)
        return self._home_target(goal)

    def _home_target(self, goal: Goal) -> tuple[float, float]:
        pose = self.driver.pose()
        assert pose is not None
        assert self.home is not None
        x, y, heading = pose
        hx, hy, hheading = self.home
        dx, dy = hx - x, hy - y
        dist = math.hypot(dx, dy)
        a = self.limits.max_accel
        alpha = 2 * a / self.driver.wheel_base
        max_w = self.limits.max_turn_rate
        if goal.phase in ("face", "drive") and dist < 0.01:
            goal.phase = "align"
        if goal.phase == "align":
            err = _wrap(hheading - heading)
            if abs(err) < 0.01:
                self.goal = None
                return 0.0, 0.0
            return 0.0, math.copysign(min(max_w, math.sqrt(2 * alpha * abs(err)), 4 * abs(err)), err)
        err = _wrap(math.atan2(dy, dx) - heading)
        if goal.phase == "face":
            if abs(err) < 0.02:
                goal.phase = "drive"
            else:
                return 0.0, math.copysign(min(max_w, math.sqrt(2 * alpha * abs(err)), 4 * abs(err)), err)
        v = min(self.speed_cap, math.sqrt(2 * a * dist), 2 * dist)
        return v, max(-max_w, min(max_w, 4 * err))

    def _ramp_to(self, v: float, w: float, dt: float) -> None:
        b = self.driver.wheel_base
        left, right = v - w * b / 2, v + w * b / 2
        cap = min(self.speed_cap, self.limits.max_speed)
        biggest = max(abs(left), abs(right))
        if biggest > cap:
            scale = cap / biggest if biggest > 0 else 0.0
            left, right = left * scale, right * scale
        step = self.limits.max_accel * dt
        cur_l, cur_r = self.wheels
        new_l = cur_l + max(-step, min(step, left - cur_l))
        new_r = cur_r + max(-step, min(step, right - cur_r))
        self.wheels = (new_l, new_r)
        self.driver.set_wheels(new_l, new_r)

    # -- reporting --------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.estopped:
            return "estop"
        if self.goal is not None or self.wheels != (0.0, 0.0):
            return "moving"
        return "idle"

    def telemetry(self) -> dict[str, Any]:
        return {
            **self.driver.telemetry(),
            "state": self.state,
            "goal": self.goal.kind if self.goal else None,
            "speed_cap": self.speed_cap,
            "estop": self.estopped,
        }
