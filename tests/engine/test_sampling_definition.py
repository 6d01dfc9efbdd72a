"""The engine's sampling record is the protocol's options, field for field (``bus.sampling`` is the definition;
the engine may not import it, so this test holds them together)."""

from __future__ import annotations

import dataclasses

import pytest

from bus.sampling import OPTIONS, SAMPLING_KEYS, complete_sampling, sampling_defaults
from engine.sampling import SamplingParams

TYPES = {"number": "float", "integer": "int", "strings": "list[str]"}


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SamplingParams)}


def test_the_engine_record_has_exactly_the_protocols_options() -> None:
    assert set(_fields()) == SAMPLING_KEYS


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_each_field_has_the_options_type_and_default(option) -> None:
    f = _fields()[option.name]
    assert f.type == TYPES[option.kind] + (" | None" if option.default is None else "")
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    assert default == option.default


def test_a_record_with_nothing_set_is_the_protocols_defaults() -> None:
    assert dataclasses.asdict(SamplingParams()) == sampling_defaults()


def test_the_daemon_builds_the_record_from_checked_options() -> None:
    params = SamplingParams(**complete_sampling({"temperature": 0.0, "top_k": 5, "stop": ["\n"]}))
    assert (params.temperature, params.top_k, params.stop, params.max_tokens) == (0.0, 5, ["\n"], 512)
