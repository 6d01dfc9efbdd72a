"""A simulated 2-D differential-drive robot: pose, wheel speeds, battery, a gripper and a beeper.

Kinematics of a differential drive with wheel speeds ``l`` and ``r`` (m/s) and wheel base ``b``:
``v = (l + r) / 2``, ``ω = (r - l) / b``; the pose integrates exactly along the arc for each step, so the
result does not depend on how finely time is sliced. The battery drains with an idle draw plus a draw
proportional to wheel speed; an empty battery stops the wheels, like a real one.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from clients.robot.commands import Action, Param
from clients.robot.drivers.base import Driver


class SimDriver(Driver):
    name: ClassVar[str] = "sim"

    def __init__(
        self,
        wheel_base: float = 0.2,
        max_wheel_speed: float = 1.0,
        battery: float = 1.0,
        idle_drain: float = 0.0005,  # fraction of charge per second
        move_drain: float = 0.002,  # fraction per second per m/s of wheel speed
    ) -> None:
        self.wheel_base = wheel_base
        self.max_wheel_speed = max_wheel_speed
        self.x = 0.0
        self.y = 0.0
        self.heading = 0.0
        self.left = 0.0
        self.right = 0.0
        self.battery = battery
        self.idle_drain = idle_drain
        self.move_drain = move_drain
        self.gripper = 0.0
        self.beeps = 0
        self.led = "off"
        self.odometer = 0.0

    def actions(self) -> dict[str, Action]:
        return {
            "beep": Action("beep", {"times": Param("int", 1, 5, required=True)}, "beep a number of times"),
            "led": Action("led", {"color": Param("str", choices=("off", "red", "green", "blue"), required=True)}),
        }

    def set_wheels(self, left: float, right: float) -> None:
        cap = self.max_wheel_speed
        self.left = max(-cap, min(cap, left))
        self.right = max(-cap, min(cap, right))
        if self.battery <= 0.0:
            self.left = self.right = 0.0

    def step(self, dt: float) -> None:
        if dt <= 0:
            return
        v = (self.left + self.right) / 2
        w = (self.right - self.left) / self.wheel_base
        if abs(w) < 1e-9:
            self.x += v * dt * math.cos(self.heading)
            self.y += v * dt * math.sin(self.heading)
        else:
            new_heading = self.heading + w * dt
            radius = v / w
            self.x += radius * (math.sin(new_heading) - math.sin(self.heading))
            self.y -= radius * (math.cos(new_heading) - math.cos(self.heading))
            self.heading = new_heading
        self.heading = math.atan2(math.sin(self.heading), math.cos(self.heading))
        self.odometer += abs(v) * dt
        drain = (self.idle_drain + self.move_drain * (abs(self.left) + abs(self.right))) * dt
        self.battery = max(0.0, self.battery - drain)
        if self.battery <= 0.0:
            self.left = self.right = 0.0

    def pose(self) -> tuple[float, float, float]:
        return self.x, self.y, self.heading

    def set_gripper(self, position: float) -> None:
        self.gripper = position

    def custom(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        if action == "beep":
            self.beeps += int(params["times"])
            return {"beeps": self.beeps}
        if action == "led":
            self.led = params["color"]
            return {"led": self.led}
        return super().custom(action, params)

    def can_move(self) -> str | None:
        return "battery empty" if self.battery <= 0.0 else None

    def telemetry(self) -> dict[str, Any]:
        return {
            "pose": {"x": round(self.x, 4), "y": round(self.y, 4), "heading": round(self.heading, 4)},
            "wheels": {"left": round(self.left, 4), "right": round(self.right, 4)},
            "battery": round(self.battery, 4),
            "gripper": self.gripper,
            "odometer": round(self.odometer, 4),
        }
