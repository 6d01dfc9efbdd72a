"""The ``[modules.llm]``, ``[modules.ollama]`` and ``[modules.llamacpp]`` tables, as the schemas the manager checks.

The keys every backend shares come first (``model``, ``sampling``, ``max_pending``, ``preload``); each backend
adds its own. The backend gets the whole checked table, defaults filled in, as its ``options``.
"""

from __future__ import annotations

from typing import Any, Final

from bus.sampling import SAMPLING_SCHEMA

_POSITIVE_INT: Final = {"type": "integer", "minimum": 1}
_CONTEXT: Final = {**_POSITIVE_INT, "maximum": 1 << 20}

COMMON: Final[dict[str, Any]] = {
    # A stored model's name or a path; empty: the packaged default (Ollama: required, a model the server has).
    "model": {"type": "string", "default": ""},
    # Default sampling values for every request (a request's own keys win).
    "sampling": {**SAMPLING_SCHEMA, "default": {}},
    # Generations running or queued before new ones are refused with ``busy``.
    "max_pending": {**_POSITIVE_INT, "default": 256},
    # false: load the model at the first request instead of when the module loads.
    "preload": {"type": "boolean", "default": True},
}


# How the native backend stores the weights (``quantize``); "auto": the fastest quantized kernels for the CPU.
QUANTIZE_MODES: Final = ("auto", "float", "int8", "int4", "none")


def _table(**own: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": {**COMMON, **own}, "additionalProperties": False}


NATIVE_SCHEMA: Final = _table(
    max_batch={**_POSITIVE_INT, "maximum": 1024, "default": 8},
    max_queue={**_POSITIVE_INT, "default": 256},
    context_length={**_CONTEXT, "default": 4096},  # capped by the model's own window
    dtype={"enum": ["float32", "bfloat16", "float16"], "default": "float32"},
    # No default here: unset means "auto", and only an explicit value says which of the two names was used.
    quantize={"enum": list(QUANTIZE_MODES)},
    kernels={"enum": list(QUANTIZE_MODES), "deprecated": True},  # quantize's old name: accepted with a warning
    compile={"enum": ["auto", "on", "off"], "default": "auto"},
)
OLLAMA_SCHEMA: Final = _table(
    url={"type": "string", "pattern": "^https?://", "default": "http://127.0.0.1:11434"},
    timeout={"type": "number", "exclusiveMinimum": 0, "default": 30.0},
    context_length={**_CONTEXT, "default": 2048},
)
LLAMACPP_SCHEMA: Final = _table(
    context_length={**_CONTEXT, "default": 2048},
    threads=_POSITIVE_INT,  # unset: llama.cpp's own choice
)
