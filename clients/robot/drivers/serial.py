"""An Arduino-style robot on a serial line (pyserial), with a line protocol a sketch parses with ``parseFloat``.

Host → board, one ASCII line each, ``\\n``-terminated:

- ``W <left> <right>`` wheel speeds in m/s (3 decimals); ``W 0.000 0.000`` stops
- ``G <position>`` gripper 0…1
- ``A <action> <json>`` a custom action declared with the ``actions`` option

Board → host: ``T key=value key=value …`` telemetry (numbers where they parse, e.g. ``T battery=0.87 x=1.2``),
``E <message>`` an error it wants reported. Anything else is ignored. Reads never block the control loop: the
port is opened with ``timeout=0`` and ``step`` consumes whatever bytes have arrived.

Needs ``pyserial`` (``pip install pyserial``), imported only when this driver is chosen.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Protocol

from clients.robot.commands import Action, Param
from clients.robot.drivers.base import Driver, DriverError

MAX_LINE = 1024


class Port(Protocol):
    def write(self, data: bytes, /) -> int | None: ...
    def read(self, size: int = 1, /) -> bytes: ...
    def close(self) -> None: ...


class SerialDriver(Driver):
    name: ClassVar[str] = "serial"

    def __init__(
        self,
        port: str | Port = "/dev/ttyACM0",
        baudrate: int = 115200,
        wheel_base: float = 0.2,
        actions: dict[str, dict[str, Any]] | None = None,
        gripper: bool = False,
    ) -> None:
        self.wheel_base = wheel_base
        self.has_gripper = gripper
        self._custom = {name: _action(name, spec) for name, spec in (actions or {}).items()}
        if isinstance(port, str):
            try:
                import serial
            except ImportError as exc:
                raise DriverError("the serial driver needs pyserial: pip install pyserial") from exc
            try:
                self.port: Port = serial.Serial(port, baudrate=baudrate, timeout=0, write_timeout=1)
            except (serial.SerialException, OSError) as exc:
                raise DriverError(f"cannot open serial port {port}: {exc}") from exc
        else:
            self.port = port
        self._buf = b""
        self.values: dict[str, Any] = {}
        self.errors: list[str] = []
        self._sent: tuple[float, float] | None = None

    def actions(self) -> dict[str, Action]:
        return dict(self._custom)

    def _send(self, line: str) -> None:
        try:
            self.port.write(line.encode("ascii") + b"\n")
        except OSError as exc:
            raise DriverError(f"serial write failed: {exc}") from exc

    def set_wheels(self, left: float, right: float) -> None:
        wheels = (round(left, 3), round(right, 3))
        if wheels == self._sent:  # the board holds its last speeds; do not flood the line every tick
            return
        self._send(f"W {wheels[0]:.3f} {wheels[1]:.3f}")
        self._sent = wheels

    def set_gripper(self, position: float) -> None:
        if not self.has_gripper:
            super().set_gripper(position)
        self._send(f"G {position:.3f}")

    def custom(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        if action not in self._custom:
            return super().custom(action, params)
        self._send(f"A {action} {json.dumps(params, separators=(',', ':'))}")
        return {"sent": action}

    def step(self, dt: float) -> None:
        try:
            data = self.port.read(4096)
        except OSError as exc:
            raise DriverError(f"serial read failed: {exc}") from exc
        if not data:
            return
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_LINE:  # a board that never sends a newline must not grow our buffer forever
            self._buf = b""
        for raw in lines:
            self._line(raw.decode("ascii", "replace").strip())

    def _line(self, line: str) -> None:
        if line.startswith("T "):
            for item in line[2:].split():
                key, sep, value = item.partition("=")
                if sep and key:
                    try:
                        self.values[key] = float(value)
                    except ValueError:
                        self.values[key] = value
        elif line.startswith("E "):
            self.errors = [*self.errors[-9:], line[2:]]

    def can_move(self) -> str | None:
        battery = self.values.get("battery")
        if isinstance(battery, float) and battery <= 0.0:
            return "battery empty"
        return None

    def telemetry(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.values)
        if self._sent is not None:
            out["wheels"] = {"left": self._sent[0], "right": self._sent[1]}
        if self.errors:
            out["errors"] = list(self.errors)
        return out

    def close(self) -> None:
        try:
            self.set_wheels(0.0, 0.0)
        finally:
            self.port.close()


def _action(name: str, spec: dict[str, Any]) -> Action:
    """A custom action from the ``actions`` option: ``{"beep": {"params": {"times": {"type": "int", …}}}}``."""
    params = {}
    for pname, p in (spec.get("params") or {}).items():
        params[pname] = Param(
            p.get("type", "number"),
            p.get("min"),
            p.get("max"),
            bool(p.get("required", False)),
            tuple(p.get("choices", ())),
        )
    return Action(name, params, str(spec.get("description", "")))
