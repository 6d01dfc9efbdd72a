"""What one generation cost: the usage record every backend ends a stream with, in one unit convention.

One record from the engine to the bus reply: the engine fills it where it measures best (on its own thread,
from the moment a request is submitted), the daemon adds the model's name and hands ``to_dict()`` to the
reply, and backends that cannot see inside their runtime (Ollama, llama.cpp) fill the same fields from what the
daemon measures around them. Times are milliseconds, rates tokens per second — the units of protocol v1's
``usage`` map (``docs/protocol.md``). No torch here: the daemon imports it for backends that never load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    """``ttft_ms`` counts from submission (queueing included) to the first token; ``total_ms`` to the end;
    ``decode_tokens_per_s`` is the rate after the first token (None with fewer than two tokens). The optional
    ``prefill_ms`` (start of the prompt's prefill to the first token) and ``decode_ms`` (first token to the
    last) are known only where the engine runs in-process, and travel only when known."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled | error
    ttft_ms: float | None
    total_ms: float
    decode_tokens_per_s: float | None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The protocol's ``usage`` map: its v1 keys always, the optional ones when known."""
        out: dict[str, Any] = {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "ttft_ms": self.ttft_ms,
            "total_ms": self.total_ms,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }
        if self.prefill_ms is not None:
            out["prefill_ms"] = self.prefill_ms
        if self.decode_ms is not None:
            out["decode_ms"] = self.decode_ms
        return out


def decode_rate(tokens: int, first: float | None, last: float | None) -> float | None:
    """Tokens per second after the first token, from the times (seconds) of the first and the last one."""
    if first is None or last is None or tokens < 2 or last <= first:
        return None
    return (tokens - 1) / (last - first)
