"""A two-motor robot on a Raspberry Pi's GPIO pins through gpiozero (H-bridge: forward/backward pin per motor).

Wheel speeds in m/s become PWM duty cycles as a fraction of ``max_wheel_speed`` (the speed at full duty,
measured on the real robot). There is no odometry, so ``home`` is refused; an optional gripper servo on
``gripper_pin``. ``pin_factory`` is gpiozero's hook for other pin libraries (and for its ``MockFactory``).

Needs ``gpiozero`` (``pip install gpiozero``), imported only when this driver is chosen.
"""

from __future__ import annotations

from typing import Any, ClassVar

from clients.robot.drivers.base import Driver, DriverError


class GpioDriver(Driver):
    name: ClassVar[str] = "gpio"

    def __init__(
        self,
        left: tuple[int, int] | list[int] = (4, 14),
        right: tuple[int, int] | list[int] = (17, 18),
        max_wheel_speed: float = 0.5,
        wheel_base: float = 0.15,
        gripper_pin: int | None = None,
        pin_factory: Any = None,
    ) -> None:
        try:
            from gpiozero import AngularServo, Motor, Robot
        except ImportError as exc:
            raise DriverError("the gpio driver needs gpiozero: pip install gpiozero") from exc
        if max_wheel_speed <= 0:
            raise DriverError(f"max_wheel_speed must be positive, got {max_wheel_speed}")
        self.wheel_base = wheel_base
        self.max_wheel_speed = max_wheel_speed
        try:
            self.robot = Robot(
                left=Motor(*left, pin_factory=pin_factory),
                right=Motor(*right, pin_factory=pin_factory),
                pin_factory=pin_factory,
            )
            self.servo = (
                AngularServo(gripper_pin, min_angle=0, max_angle=90, pin_factory=pin_factory)
                if gripper_pin is not None
                else None
            )
        except Exception as exc:  # gpiozero raises its own family (BadPinFactory, PinInvalidPin, …)
            raise DriverError(f"cannot set up GPIO pins: {type(exc).__name__}: {exc}") from exc
        self.left = self.right = 0.0

    def _duty(self, speed: float) -> float:
        return max(-1.0, min(1.0, speed / self.max_wheel_speed))

    def set_wheels(self, left: float, right: float) -> None:
        self.left, self.right = left, right
        self.robot.value = (self._duty(left), self._duty(right))

    def set_gripper(self, position: float) -> None:
        if self.servo is None:
            super().set_gripper(position)
            return
        self.servo.angle = 90 * position

    def telemetry(self) -> dict[str, Any]:
        return {"wheels": {"left": round(self.left, 4), "right": round(self.right, 4)}}

    def close(self) -> None:
        self.robot.stop()
        self.robot.close()
        if self.servo is not None:
            self.servo.close()
