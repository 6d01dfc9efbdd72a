"""Sampling options as they travel on the bus: one JSON schema, one merge rule, one conversion.

Requests carry sampling options as plain keys (``temperature``, ``max_tokens`` …). The schema below is what the
hub validates, so a bad value is refused with ``bad_request`` naming the field before any work starts; personas
store the same keys as their defaults, and a request's own keys win over them.
"""

from __future__ import annotations

from typing import Any, Final

MAX_TOKENS_LIMIT: Final = 32768

# Keys and JSON-schema of every sampling option a client may send.
SAMPLING_PROPERTIES: Final[dict[str, Any]] = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 100},
    "top_k": {"type": "integer", "minimum": 0},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "repetition_penalty": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS_LIMIT},
    "stop": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256}, "maxItems": 16},
}
SAMPLING_KEYS: Final = frozenset(SAMPLING_PROPERTIES)

SAMPLING_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": SAMPLING_PROPERTIES,
    "additionalProperties": False,
}

DEFAULT_MAX_TOKENS: Final = 512


def pick_sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling keys present in a request body (everything else in the body is not sampling)."""
    return {k: body[k] for k in SAMPLING_KEYS if k in body and body[k] is not None}


def merge_sampling(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Later layers win: ``merge_sampling(persona_defaults, request_options)``."""
    out: dict[str, Any] = {}
    for layer in layers:
        if layer:
            out.update({k: v for k, v in layer.items() if k in SAMPLING_KEYS and v is not None})
    return out


# The engine's defaults (``engine.sampling.SamplingParams``), for backends that would otherwise apply their own.
SAMPLING_DEFAULTS: Final[dict[str, Any]] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "seed": None,
    "max_tokens": DEFAULT_MAX_TOKENS,
    "stop": [],
}
