"""The sampling options are defined once (``bus.sampling.OPTIONS``): the schema the hub validates with, the
checks the daemon applies, the CLI flags and the docs table all say the same thing."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bus.errors import BadRequest
from bus.sampling import (
    BY_NAME,
    OPTIONS,
    SAMPLING_KEYS,
    SAMPLING_SCHEMA,
    check_sampling,
    complete_sampling,
    markdown_table,
    merge_sampling,
    pick_sampling,
    sampling_defaults,
)
from clients.cli.main import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", math.nan, "temperature must be a number, got NaN"),
        ("temperature", -0.1, "temperature must be in [0, 100], got -0.1"),
        ("temperature", "hot", "temperature must be a number, got str"),
        ("top_k", -1, "top_k must be in ≥ 0, got -1"),
        ("top_k", 2.5, "top_k must be an integer, got float"),
        ("top_k", True, "top_k must be an integer, got bool"),
        ("top_p", 0.0, "top_p must be in (0, 1], got 0.0"),
        ("top_p", 1.5, "top_p must be in (0, 1], got 1.5"),
        ("min_p", -0.5, "min_p must be in [0, 1], got -0.5"),
        ("repetition_penalty", 0.0, "repetition_penalty must be in (0, 100], got 0.0"),
        ("presence_penalty", 3.0, "presence_penalty must be in [-2, 2], got 3.0"),
        ("frequency_penalty", math.nan, "frequency_penalty must be a number, got NaN"),
        ("seed", -1, "seed must be in [0, 9223372036854775807], got -1"),
        ("seed", 2**63, "seed must be in [0, 9223372036854775807], got 9223372036854775808"),
        ("max_tokens", 0, "max_tokens must be in [1, 32768], got 0"),
        ("max_tokens", 32769, "max_tokens must be in [1, 32768], got 32769"),
        ("stop", "END", "stop must be a list of strings, got str"),
        ("stop", [""], "stop entries must be strings of 1–256 characters, got ''"),
        ("stop", ["x" * 257], "stop entries must be strings of 1–256 characters"),
        ("stop", [3], "stop entries must be strings of 1–256 characters, got 3"),
        ("stop", ["x"] * 17, "stop takes at most 16 strings, got 17"),
    ],
)
def test_a_bad_value_is_refused_as_bad_request_naming_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_sampling({field: value})
    assert message in info.value.message
    assert info.value.code == "bad_request"


def _probes(name: str) -> list[Any]:
    """Values at and just beyond each bound of an option, plus a wrong type."""
    o = BY_NAME[name]
    if o.kind == "strings":
        return [[], ["a"], ["x" * 256], ["x" * 257], [""], ["a"] * 16, ["a"] * 17, "a", [1]]
    step = 1 if o.kind == "integer" else 1e-6
    out: list[Any] = ["1", None if o.default is not None else "x"]
    for bound in (o.minimum, o.maximum):
        if bound is not None:
            b = int(bound) if o.kind == "integer" else float(bound)
            out += [b - step, b, b + step]
    if o.kind == "integer":
        out.append(1.5)
    return [v for v in out if v is not None]


@pytest.mark.parametrize("name", sorted(SAMPLING_KEYS))
def test_the_schema_and_the_checks_accept_the_same_values(name: str) -> None:
    validator = jsonschema.Draft202012Validator(SAMPLING_SCHEMA)
    for value in _probes(name):
        by_schema = validator.is_valid({name: value})
        try:
            check_sampling({name: value})
            by_check = True
        except BadRequest:
            by_check = False
        assert by_schema == by_check, (name, value)


def test_nan_passes_a_json_schema_so_the_checks_refuse_it() -> None:
    assert jsonschema.Draft202012Validator(SAMPLING_SCHEMA).is_valid({"temperature": math.nan})
    with pytest.raises(BadRequest, match="NaN"):
        check_sampling({"temperature": math.nan})


def test_complete_fills_every_option_with_its_default_and_keeps_given_ones() -> None:
    out = complete_sampling({"temperature": 0.0, "stop": ["\n"]})
    assert set(out) == SAMPLING_KEYS
    assert out == {**sampling_defaults(), "temperature": 0.0, "stop": ["\n"]}
    assert complete_sampling({}) == sampling_defaults()


def test_defaults_are_fresh_copies() -> None:
    sampling_defaults()["stop"].append("x")
    assert sampling_defaults()["stop"] == []


def test_pick_and_merge_keep_only_sampling_keys_and_later_layers_win() -> None:
    assert pick_sampling({"prompt": "hi", "top_k": 3, "seed": None}) == {"top_k": 3}
    merged = merge_sampling({"temperature": 0.2, "top_p": 0.9}, None, {"temperature": 0.0, "text": "x"})
    assert merged == {"temperature": 0.0, "top_p": 0.9}


def test_the_protocol_page_shows_the_generated_table() -> None:
    page = (DOCS / "protocol.md").read_text()
    found = re.search(r"<!-- sampling-options:[^>]*-->\n(.*?)\n<!-- /sampling-options -->", page, re.S)
    assert found is not None, "docs/protocol.md lost its sampling-options markers"
    assert found.group(1) == markdown_table()


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_the_cli_has_one_flag_per_option_with_its_help(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr]
    flags = {a.dest: a for a in sub._actions if a.dest in SAMPLING_KEYS}
    assert set(flags) == SAMPLING_KEYS
    for o in OPTIONS:
        assert flags[o.name].option_strings == [o.flag]
        assert o.help in (flags[o.name].help or "")


def test_cli_flags_parse_to_the_options_a_request_carries() -> None:
    args = build_parser().parse_args(
        ["ask", "hi", "--top-p", "0.5", "--presence-penalty", "0.3", "--stop", "a", "--stop", "b", "--seed", "4"]
    )
    from clients.cli.ask import sampling_from

    assert sampling_from(args) == {"top_p": 0.5, "presence_penalty": 0.3, "stop": ["a", "b"], "seed": 4}
