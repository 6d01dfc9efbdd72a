"""Sampling options: what a generation request may carry, defined once.

Every request that generates text (``llm.generate``, ``llm.chat``, ``chat.send``, ``chat.regenerate``) and every
persona carries sampling options as plain keys of its body. ``OPTIONS`` is the one definition of them — name,
type, range, default and help — and everything else is derived from it: the JSON schema the hub validates
requests with, the ``enigma ask``/``enigma chat`` flags, the table in ``docs/protocol.md`` (a test keeps it equal
to ``markdown_table()``) and the full set of values the daemon hands to a backend. It lives in ``bus`` because it
is protocol, and because the CLI may import nothing else; the engine keeps a typed record of the same fields
(``engine.sampling.SamplingParams``) that a test holds equal to this one.

The defaults are the values at which each stage does nothing (temperature 1, filters off, penalties neutral),
plus a reply length; a module's ``sampling`` table and a persona's defaults sit above them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from bus.errors import BadRequest

MAX_TOKENS_LIMIT: Final = 32768
MAX_STOP_STRINGS: Final = 16
MAX_STOP_LENGTH: Final = 256
SEED_LIMIT: Final = 2**63 - 1  # what torch.Generator.manual_seed takes

Kind = Literal["number", "integer", "strings"]


@dataclass(frozen=True, slots=True)
class Option:
    """One sampling option. ``minimum``/``maximum`` bound numbers (``open_min``: the minimum itself is refused);
    for ``strings`` (a list of strings) they bound the number of entries."""

    name: str
    kind: Kind
    default: Any
    help: str
    metavar: str
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag (``--top-p``)."""
        return "--" + self.name.replace("_", "-")

    def schema(self) -> dict[str, Any]:
        """This option's JSON schema (draft 2020-12), as the hub validates it."""
        if self.kind == "strings":
            return {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LENGTH},
                "maxItems": MAX_STOP_STRINGS,
            }
        out: dict[str, Any] = {"type": self.kind}
        if self.minimum is not None:
            out["exclusiveMinimum" if self.open_min else "minimum"] = _num(self.minimum)
        if self.maximum is not None:
            out["maximum"] = _num(self.maximum)
        return out

    def range_text(self) -> str:
        """The accepted values in words, for the docs table and error messages."""
        if self.kind == "strings":
            return f"at most {MAX_STOP_STRINGS} strings of 1–{MAX_STOP_LENGTH} characters"
        lo, hi = _num(self.minimum), _num(self.maximum)
        if hi is None:
            return f"> {lo}" if self.open_min else f"≥ {lo}"
        return f"{'(' if self.open_min else '['}{lo}, {hi}]"

    def check(self, value: Any) -> None:
        """Raise ``BadRequest`` naming this option unless ``value`` is acceptable (NaN included, which a JSON
        schema cannot refuse: every comparison with it is false)."""
        if self.kind == "strings":
            if isinstance(value, str) or not isinstance(value, list | tuple):
                raise BadRequest(f"{self.name} must be a list of strings, got {type(value).__name__}")
            if len(value) > MAX_STOP_STRINGS:
                raise BadRequest(f"{self.name} takes at most {MAX_STOP_STRINGS} strings, got {len(value)}")
            for s in value:
                if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_LENGTH:
                    raise BadRequest(
                        f"{self.name} entries must be strings of 1–{MAX_STOP_LENGTH} characters, got {s!r}"
                    )
            return
        integer = self.kind == "integer"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise BadRequest(
                f"{self.name} must be {'an integer' if integer else 'a number'}, got {type(value).__name__}"
            )
        if math.isnan(value):
            raise BadRequest(f"{self.name} must be a number, got NaN")
        too_low = self.minimum is not None and (value < self.minimum or (self.open_min and value == self.minimum))
        too_high = self.maximum is not None and value > self.maximum
        if too_low or too_high:
            raise BadRequest(f"{self.name} must be in {self.range_text()}, got {value}")


def _num(x: float | None) -> Any:
    """Whole bounds as ints (``0``, not ``0.0``) so schemas and docs read as written."""
    return int(x) if x is not None and float(x).is_integer() else x


OPTIONS: Final[tuple[Option, ...]] = (
    Option("temperature", "number", 1.0, "0 is greedy; higher is more random", "T", 0, 100),
    Option("top_k", "integer", 0, "keep the K most likely tokens (0 = off)", "K", 0),
    Option(
        "top_p",
        "number",
        1.0,
        "keep the most likely tokens up to this probability mass (1 = off)",
        "P",
        0,
        1,
        open_min=True,
    ),
    Option("min_p", "number", 0.0, "drop tokens less likely than this fraction of the best one (0 = off)", "P", 0, 1),
    Option(
        "repetition_penalty",
        "number",
        1.0,
        "divide the logits of tokens seen so far, prompt included (1 = off)",
        "X",
        0,
        100,
        open_min=True,
    ),
    Option("presence_penalty", "number", 0.0, "subtract once from tokens already generated (0 = off)", "X", -2, 2),
    Option("frequency_penalty", "number", 0.0, "subtract per occurrence in the reply so far (0 = off)", "X", -2, 2),
    Option("seed", "integer", None, "seed of the request's own random generator (unset = random)", "N", 0, SEED_LIMIT),
    Option("max_tokens", "integer", 512, "longest reply, in tokens", "N", 1, MAX_TOKENS_LIMIT),
    Option("stop", "strings", [], "end the reply before any of these texts", "TEXT"),
)
BY_NAME: Final[Mapping[str, Option]] = {o.name: o for o in OPTIONS}
SAMPLING_KEYS: Final = frozenset(BY_NAME)

# JSON schema of every sampling option, to merge into a method's body schema; and of a sampling table alone.
SAMPLING_PROPERTIES: Final[dict[str, Any]] = {o.name: o.schema() for o in OPTIONS}
SAMPLING_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": SAMPLING_PROPERTIES,
    "additionalProperties": False,
}


def sampling_defaults() -> dict[str, Any]:
    """Every option at its default (a fresh copy: ``stop`` is a list)."""
    return {o.name: list(o.default) if isinstance(o.default, list) else o.default for o in OPTIONS}


DEFAULT_MAX_TOKENS: Final = BY_NAME["max_tokens"].default


def pick_sampling(body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling keys present in a request body (everything else in the body is not sampling)."""
    return {k: body[k] for k in SAMPLING_KEYS if k in body and body[k] is not None}


def merge_sampling(*layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Later layers win: ``merge_sampling(module_defaults, persona_defaults, request_options)``; unknown keys and
    ``None`` values are left out."""
    out: dict[str, Any] = {}
    for layer in layers:
        if layer:
            out.update({k: v for k, v in layer.items() if k in SAMPLING_KEYS and v is not None})
    return out


def check_sampling(values: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling keys of ``values``, each checked: ``BadRequest`` names the first bad option."""
    out = merge_sampling(values)
    for name, value in out.items():
        BY_NAME[name].check(value)
    return out


def complete_sampling(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked, with every missing option at its default: what a backend that applies no defaults of
    its own (the native engine, llama.cpp) is handed."""
    out = sampling_defaults()
    out.update({k: list(v) if k == "stop" else v for k, v in check_sampling(values).items()})
    return out


def markdown_table() -> str:
    """The options as the Markdown table ``docs/protocol.md`` shows."""
    rows = ["| key | type | range | default | meaning |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        kind = "list of strings" if o.kind == "strings" else o.kind
        default = "unset" if o.default is None else ("[]" if o.default == [] else _num(o.default))
        rows.append(f"| `{o.name}` | {kind} | {o.range_text()} | {default} | {o.help} |")
    return "\n".join(rows)
