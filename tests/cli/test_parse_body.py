"""KEY=VALUE pairs and --body, the way ``enigma publish`` and ``enigma call`` build a request body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.cli.events import parse_body
from clients.cli.exits import UsageError

keys = st.text(min_size=1, max_size=20).filter(lambda k: "=" not in k)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(keys, json_values, max_size=6))
def test_json_values_keep_their_type(body: dict[str, Any]) -> None:
    pairs = [f"{k}={json.dumps(v)}" for k, v in body.items()]
    assert parse_body(pairs, None) == body


@given(keys, st.text(max_size=30))
def test_a_value_that_is_not_json_is_the_string_itself(key: str, value: str) -> None:
    try:
        expected: Any = json.loads(value)
    except ValueError:
        expected = value
    assert parse_body([f"{key}={value}"], None) == {key: expected}


def test_pairs_override_keys_of_body() -> None:
    assert parse_body(["a=2", "c=x"], '{"a": 1, "b": true}') == {"a": 2, "b": True, "c": "x"}


@pytest.mark.parametrize(
    ("pairs", "body", "message"),
    [
        (["novalue"], None, "expected KEY=VALUE, got 'novalue'"),
        (["=3"], None, "expected KEY=VALUE, got '=3'"),
        ([], "{", "--body is not valid JSON: Expecting property name enclosed in double quotes"),
        ([], "3", "--body must be a JSON object, got int"),
    ],
)
def test_malformed_input_is_a_usage_error(pairs: list[str], body: str | None, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_body(pairs, body)
    assert info.value.message.startswith(message)
    assert info.value.exit_code == 2
