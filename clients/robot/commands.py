"""Robot commands: parsed and checked before anything moves.

A command arrives as JSON on ``enigma/robot/<id>/cmd``: ``{"id"?, "action", …params}``. ``parse_command``
either returns a ``Command`` whose every number is finite and within the robot's limits, or raises
``CommandError`` with a wire code; nothing outside this module sees a raw payload. Out-of-range values are
refused, never clamped: a command that asks for 5 m/s from a 0.5 m/s robot is a bug in the sender, and
guessing what it meant is how robots hit walls. Unknown fields are refused for the same reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

MAX_PAYLOAD: Final = 64 * 1024
MAX_ID: Final = 128


class CommandError(Exception):
    """A command that must not run. ``code`` is a bus error code (``bad_request``, ``too_large``, …)."""

    def __init__(self, code: str, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command_id = command_id

    def to_body(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter of an action: ``kind`` is ``number``, ``int``, ``bool`` or ``str`` (then ``choices``)."""

    kind: str
    min: float | None = None
    max: float | None = None
    required: bool = False
    choices: tuple[str, ...] = ()
    description: str = ""

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind, "required": self.required}
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        if self.choices:
            d["choices"] = list(self.choices)
        if self.description:
            d["description"] = self.description
        return d


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    params: dict[str, Param] = field(default_factory=dict)
    description: str = ""
    # At most one of these groups may be given (e.g. a move by distance or by duration, not both).
    exclusive: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {"description": self.description, "params": {k: p.describe() for k, p in self.params.items()}}


@dataclass(frozen=True, slots=True)
class Limits:
    """The robot's hard limits. ``deadman`` stops open-ended motion when commands stop arriving."""

    max_speed: float = 0.5  # m/s, forward or backward
    max_turn_rate: float = 2.0  # rad/s
    max_accel: float = 1.0  # m/s² per wheel
    max_distance: float = 10.0  # m in one move
    max_duration: float = 30.0  # s in one timed motion
    deadman: float = 0.5  # s without a command before open-ended motion stops
    tick: float = 0.02  # s per control step

    def to_dict(self) -> dict[str, float]:
        return {
            "max_speed": self.max_speed,
            "max_turn_rate": self.max_turn_rate,
            "max_accel": self.max_accel,
            "max_distance": self.max_distance,
            "max_duration": self.max_duration,
            "deadman": self.deadman,
            "tick": self.tick,
        }


def builtin_actions(limits: Limits) -> dict[str, Action]:
    """The actions every robot understands, with ranges from its limits."""
    speed = Param("number", -limits.max_speed, limits.max_speed, description="m/s, negative is backwards")
    rate = Param("number", -limits.max_turn_rate, limits.max_turn_rate, description="rad/s, positive is left")
    duration = Param("number", 0.0, limits.max_duration, description="seconds")
    return {
        "move": Action(
            "move",
            {
                "speed": Param("number", -limits.max_speed, limits.max_speed, required=True),
                "distance": Param("number", 0.0, limits.max_distance, description="metres"),
                "duration": duration,
            },
            "drive straight for a distance or a duration",
            exclusive=("distance", "duration"),
        ),
        "turn": Action(
            "turn",
            {
                "rate": Param("number", -limits.max_turn_rate, limits.max_turn_rate, required=True),
                "angle": Param("number", 0.0, 4 * math.pi, description="radians to turn"),
                "duration": duration,
            },
            "turn on the spot by an angle or for a duration",
            exclusive=("angle", "duration"),
        ),
        "drive": Action(
            "drive",
            {"linear": speed, "angular": rate},
            "open-ended velocity (teleoperation); stops after the dead-man timeout unless repeated",
        ),
        "stop": Action("stop", {}, "decelerate to a stop and drop the current motion"),
        "home": Action("home", {}, "drive back to the start pose"),
        "gripper": Action("gripper", {"position": Param("number", 0.0, 1.0, required=True)}, "0 is closed, 1 is open"),
        "speed": Action(
            "speed",
            {"max": Param("number", 0.0, limits.max_speed, required=True)},
            "lower (or restore) the speed cap",
        ),
        "reset": Action("reset", {}, "release a latched emergency stop"),
        "ping": Action("ping", {}, "keep the dead-man timer alive without changing anything"),
    }


@dataclass(frozen=True, slots=True)
class Command:
    action: str
    params: dict[str, Any]
    id: str | None = None


def _check_param(action: str, name: str, p: Param, value: Any) -> Any:
    where = f"{action}.{name}"
    if p.kind in ("number", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CommandError("bad_request", f"{where} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise CommandError("bad_request", f"{where} must be a finite number, got {value}")
        if p.kind == "int" and not float(value).is_integer():
            raise CommandError("bad_request", f"{where} must be a whole number, got {value}")
        if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
            raise CommandError("bad_request", f"{where}={value} is out of range [{p.min}, {p.max}]")
        return int(value) if p.kind == "int" else float(value)
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise CommandError("bad_request", f"{where} must be true or false, got {type(value).__name__}")
        return value
    if not isinstance(value, str) or len(value) > 256:
        raise CommandError("bad_request", f"{where} must be a string of at most 256 characters")
    if p.choices and value not in p.choices:
        raise CommandError("bad_request", f"{where} must be one of {', '.join(p.choices)}, got {value!r}")
    return value


def parse_command(payload: bytes, actions: dict[str, Action]) -> Command:
    """Decode and validate one command; raises ``CommandError`` for anything that must not run."""
    if len(payload) > MAX_PAYLOAD:
        raise CommandError("too_large", f"command of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError("bad_request", f"command is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise CommandError("bad_request", f"command must be a JSON object, got {type(obj).__name__}")
    cid = obj.get("id")
    if cid is not None and (not isinstance(cid, str) or not 0 < len(cid) <= MAX_ID):
        raise CommandError("bad_request", f"'id' must be a string of 1 to {MAX_ID} characters")
    name = obj.get("action")
    if not isinstance(name, str):
        raise CommandError("bad_request", "'action' must be a string", cid)
    action = actions.get(name)
    if action is None:
        raise CommandError("bad_request", f"unknown action {name!r} (known: {', '.join(sorted(actions))})", cid)
    given = {k: v for k, v in obj.items() if k not in ("id", "action")}
    unknown = sorted(set(given) - set(action.params))
    if unknown:
        raise CommandError("bad_request", f"{name}: unknown field {unknown[0]!r}", cid)
    params: dict[str, Any] = {}
    try:
        for pname, p in action.params.items():
            if pname in given:
                params[pname] = _check_param(name, pname, p, given[pname])
            elif p.required:
                raise CommandError("bad_request", f"{name}.{pname} is required")
    except CommandError as exc:
        exc.command_id = cid
        raise
    both = [k for k in action.exclusive if k in params]
    if len(both) > 1:
        raise CommandError("bad_request", f"{name}: give {' or '.join(both)}, not both", cid)
    return Command(name, params, cid)
