"""The hardware drivers against stand-ins that behave like the hardware: a pty for the serial board, gpiozero's
mock pins for the Pi. Each is an optional extra, so its tests skip when the library is not installed."""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from clients.robot.commands import Command, CommandError, Limits
from clients.robot.controller import Controller
from clients.robot.drivers import DriverError, load_driver


def test_unknown_driver_is_refused_with_the_known_ones() -> None:
    with pytest.raises(DriverError, match=r"unknown driver 'lego' \(known: gpio, serial, sim\)"):
        load_driver("lego")


# -- serial --------------------------------------------------------------------------------------------------
class Board:
    """The microcontroller's end of a pseudo-terminal: reads what the driver sends, writes telemetry back."""

    def __init__(self) -> None:
        self.fd, slave = os.openpty()
        self.path = os.ttyname(slave)
        self._slave = slave
        self._buf = b""
        os.set_blocking(self.fd, False)

    def lines(self) -> list[str]:
        """Wait (up to 5 s) until the driver's bytes are readable, then return the complete lines."""
        if select.select([self.fd], [], [], 5.0)[0]:
            self._buf += os.read(self.fd, 65536)
        *done, self._buf = self._buf.split(b"\n")
        return [d.decode().strip("\r") for d in done]

    def say(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._slave)


@pytest.fixture
def board() -> Iterator[Board]:
    pytest.importorskip("serial")
    b = Board()
    yield b
    b.close()


def _wait_lines(board: Board, n: int) -> list[str]:
    got: list[str] = []
    for _ in range(n):
        got += board.lines()
        if len(got) >= n:
            return got
    raise AssertionError(f"board received {got}")


def _step_until(d: Any, done: Callable[[], bool]) -> None:
    """Step the driver each time its port has bytes (waiting up to 5 s for each) until ``done()``."""
    while not done():
        assert select.select([d.port.fileno()], [], [], 5.0)[0], "the board's bytes never arrived"
        d.step(0.02)


def _raw(board: Board) -> None:
    import termios
    import tty

    tty.setraw(board._slave, termios.TCSANOW)


def test_serial_driver_sends_wheel_speeds_once_per_change(board: Board) -> None:
    from clients.robot.drivers.serial import SerialDriver

    _raw(board)
    d = SerialDriver(board.path)
    d.set_wheels(0.1, 0.2)
    d.set_wheels(0.1, 0.2)
    d.set_wheels(0.0, 0.0)
    assert _wait_lines(board, 2) == ["W 0.100 0.200", "W 0.000 0.000"]
    d.close()


def test_serial_driver_reads_telemetry_and_errors_without_blocking(board: Board) -> None:
    from clients.robot.drivers.serial import SerialDriver

    _raw(board)
    d = SerialDriver(board.path)
    d.step(0.02)  # nothing there yet: returns at once
    board.say("T battery=0.5 x=1.25 mode=auto\nE motor hot\nT batt")
    _step_until(d, lambda: bool(d.errors))
    t = d.telemetry()
    assert (t["battery"], t["x"], t["mode"], t["errors"]) == (0.5, 1.25, "auto", ["motor hot"])
    board.say("ery=0\n")  # the rest of a line split across reads
    _step_until(d, lambda: d.values.get("battery") == 0.0)
    assert d.can_move() == "battery empty"
    d.close()


def test_serial_estop_reaches_the_board_at_once(board: Board) -> None:
    from clients.robot.drivers.serial import SerialDriver

    _raw(board)
    d = SerialDriver(board.path)
    ctl = Controller(d, Limits(), 0.0)
    ctl.command(Command("drive", {"linear": 0.3}), 0.0)
    ctl.tick(0.02)
    assert _wait_lines(board, 1) == ["W 0.020 0.020"]
    ctl.estop("test")
    assert _wait_lines(board, 1) == ["W 0.000 0.000"]
    d.close()


def test_serial_custom_action_is_declared_and_sent(board: Board) -> None:
    from clients.robot.drivers.serial import SerialDriver

    _raw(board)
    d = SerialDriver(board.path, actions={"horn": {"params": {"ms": {"type": "int", "min": 1, "max": 2000}}}})
    ctl = Controller(d, Limits(), 0.0)
    assert ctl.actions["horn"].params["ms"].max == 2000
    assert ctl.command(Command("horn", {"ms": 300}), 0.0) == {"sent": "horn"}
    assert _wait_lines(board, 1) == ['A horn {"ms":300}']
    d.close()


def test_serial_port_that_cannot_open_is_a_driver_error() -> None:
    pytest.importorskip("serial")
    with pytest.raises(DriverError, match=r"cannot open serial port /nonexistent/tty"):
        load_driver("serial", {"port": "/nonexistent/tty"})


# -- gpio ----------------------------------------------------------------------------------------------------
@pytest.fixture
def pins() -> Iterator[object]:
    mock = pytest.importorskip("gpiozero.pins.mock")
    factory = mock.MockFactory(pin_class=mock.MockPWMPin)
    yield factory
    factory.reset()


def test_gpio_driver_turns_wheel_speeds_into_duty_cycles(pins: object) -> None:
    d = load_driver("gpio", {"max_wheel_speed": 0.5, "pin_factory": pins})
    d.set_wheels(0.25, -0.5)
    pin = pins.pin  # type: ignore[attr-defined]
    assert (pin(4).state, pin(14).state) == (0.5, 0)  # left forward at half duty
    assert (pin(17).state, pin(18).state) == (0, 1.0)  # right backward at full duty
    d.close()


def test_gpio_robot_cannot_go_home_without_odometry(pins: object) -> None:
    d = load_driver("gpio", {"pin_factory": pins})
    with pytest.raises(CommandError, match="home needs odometry, which the gpio driver lacks"):
        Controller(d, Limits(), 0.0).command(Command("home", {}), 0.0)
    d.close()


def test_gpio_gripper_without_servo_is_refused(pins: object) -> None:
    d = load_driver("gpio", {"pin_factory": pins})
    with pytest.raises(CommandError, match="the gpio driver has no gripper"):
        Controller(d, Limits(), 0.0).command(Command("gripper", {"position": 1.0}), 0.0)
    d.close()
