"""Command validation: anything malformed or out of range is refused before it can move the robot."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.robot.commands import MAX_PAYLOAD, CommandError, Limits, builtin_actions, parse_command
from clients.robot.drivers.sim import SimDriver

ACTIONS = {**builtin_actions(Limits()), **SimDriver().actions()}


def refused(payload: bytes | str) -> CommandError:
    data = payload.encode() if isinstance(payload, str) else payload
    with pytest.raises(CommandError) as info:
        parse_command(data, ACTIONS)
    return info.value


def test_valid_move_is_parsed_with_its_id() -> None:
    cmd = parse_command(b'{"id": "c1", "action": "move", "speed": 0.3, "distance": 1}', ACTIONS)
    assert (cmd.id, cmd.action, cmd.params) == ("c1", "move", {"speed": 0.3, "distance": 1.0})


def test_nan_speed_is_refused() -> None:
    err = refused('{"action": "move", "speed": NaN, "distance": 1}')
    assert (err.code, err.message) == ("bad_request", "move.speed must be a finite number, got nan")


def test_infinite_speed_is_refused() -> None:
    err = refused('{"action": "drive", "linear": Infinity}')
    assert err.message == "drive.linear must be a finite number, got inf"


def test_speed_beyond_limit_is_refused_not_clamped() -> None:
    err = refused('{"id": "c9", "action": "move", "speed": 5, "duration": 1}')
    assert err.message == "move.speed=5 is out of range [-0.5, 0.5]"
    assert err.command_id == "c9"


def test_unknown_action_is_refused_and_known_ones_listed() -> None:
    err = refused('{"action": "fly"}')
    assert err.code == "bad_request"
    assert err.message.startswith("unknown action 'fly' (known: beep, drive, gripper, home, led, move, ping, reset")


def test_ten_megabyte_payload_is_refused_as_too_large() -> None:
    err = refused(b'{"action": "move", "speed": 0.1, "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}')
    assert err.code == "too_large"
    assert err.message.endswith(f"exceeds the limit of {MAX_PAYLOAD}")


def test_unknown_field_is_refused() -> None:
    assert refused('{"action": "stop", "force": 1}').message == "stop: unknown field 'force'"


def test_boolean_is_not_a_number() -> None:
    assert refused('{"action": "gripper", "position": true}').message == "gripper.position must be a number, got bool"


def test_missing_required_parameter_is_refused() -> None:
    assert refused('{"action": "move", "distance": 1}').message == "move.speed is required"


def test_distance_and_duration_together_are_refused() -> None:
    err = refused('{"action": "move", "speed": 0.1, "distance": 1, "duration": 2}')
    assert err.message == "move: give distance or duration, not both"


def test_custom_action_checks_whole_numbers_and_choices() -> None:
    assert refused('{"action": "beep", "times": 1.5}').message == "beep.times must be a whole number, got 1.5"
    assert (
        refused('{"action": "led", "color": "pink"}').message
        == "led.color must be one of off, red, green, blue, got 'pink'"
    )
    assert parse_command(b'{"action": "beep", "times": 2}', ACTIONS).params == {"times": 2}


def test_invalid_json_and_non_objects_are_refused() -> None:
    assert refused("{nope").message.startswith("command is not valid JSON: ")
    assert refused("[1]").message == "command must be a JSON object, got list"
    assert refused('{"action": 3}').message == "'action' must be a string"
    assert refused('{"id": 7, "action": "stop"}').message == "'id' must be a string of 1 to 128 characters"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_parse_or_raise_command_error(data: bytes) -> None:
    try:
        cmd = parse_command(data, ACTIONS)
    except CommandError as exc:
        code = exc.code
    else:
        code = "ok"
        assert cmd.action in ACTIONS
    assert code in ("ok", "bad_request", "too_large")


@given(
    st.dictionaries(
        st.sampled_from(["action", "speed", "distance", "rate", "linear"]),
        st.one_of(st.floats(allow_nan=True), st.sampled_from(["move", "turn", "drive"])),
    )
)
def test_accepted_numbers_are_always_finite_and_in_range(obj: dict[str, object]) -> None:
    try:
        cmd = parse_command(json.dumps(obj).encode(), ACTIONS)
    except CommandError:
        return
    for value in cmd.params.values():
        assert math.isfinite(value)
        assert abs(value) <= max(Limits().max_distance, Limits().max_turn_rate)
