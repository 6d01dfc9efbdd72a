"""The interface every robot driver implements; the controller talks to nothing else.

Drivers are deliberately dumb: they set wheel speeds they are given, report what they sense, and run custom
actions. Limits, ramps, the dead-man timer and the e-stop live in ``clients.robot.controller`` so that every
driver gets the same safety for free.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from clients.robot.commands import Action


class DriverError(Exception):
    """A driver that cannot start or an action it cannot perform."""


class Driver(abc.ABC):
    name: ClassVar[str]
    wheel_base: float = 0.2  # metres between the wheels

    def actions(self) -> dict[str, Action]:
        """Custom actions beyond the built-in ones (e.g. ``beep``), with their parameters."""
        return {}

    @abc.abstractmethod
    def set_wheels(self, left: float, right: float) -> None:
        """Command wheel surface speeds in m/s; the controller has already applied every limit."""

    def step(self, dt: float) -> None:  # noqa: B027 - hardware drivers have nothing to integrate
        """Advance by ``dt`` seconds (the simulator integrates; hardware drivers read their sensors)."""

    def pose(self) -> tuple[float, float, float] | None:
        """(x, y, heading) from odometry, or None when the robot cannot tell (then ``home`` is refused)."""
        return None

    def set_gripper(self, position: float) -> None:
        raise DriverError(f"the {self.name} driver has no gripper")

    def custom(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        raise DriverError(f"the {self.name} driver has no action {action!r}")

    def can_move(self) -> str | None:
        """None when motion is possible, else the reason it is not (e.g. an empty battery)."""
        return None

    def telemetry(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:  # noqa: B027 - optional
        """Release the hardware; wheels must already be stopped."""
