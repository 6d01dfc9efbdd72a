"""How much memory a model will take before it is loaded — so the daemon can refuse or pick a smaller preset.

The estimate counts what dominates on a CPU or GPU box: the weights (at the chosen precision, quantized
formats with their block scales), the KV cache (two tensors per layer, ``batch × context × kv_heads ×
head_dim``, always in a float type), the RoPE table, and the transient activations of a prefill (the widest
layer output for the prompt chunk plus the logits). It is an estimate, not an allocator: allocator slack and
the Python/torch runtime come on top as a fixed overhead.
"""

from __future__ import annotations

from typing import Any

from engine.model import ModelConfig, param_count

# Bytes per weight, block scales included (llama.cpp block layouts: Q8_0 = 34 bytes / 32, Q4_0 = 18 / 32 …).
BYTES_PER_WEIGHT: dict[str, float] = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "int8": 34 / 32,
    "q8_0": 34 / 32,
    "int4": 18 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "q4_k": 144 / 256,
    "q5_k": 176 / 256,
    "q6_k": 210 / 256,
}
RUNTIME_OVERHEAD = 200 * 1024 * 1024  # interpreter, torch, tokenizer: measured order of magnitude on CPU


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.").lower()
    aliases = {
        "fp32": "float32",
        "f32": "float32",
        "bf16": "bfloat16",
        "fp16": "float16",
        "f16": "float16",
        "half": "float16",
        "float": "float32",
    }
    return aliases.get(name, name)


def estimate_memory(
    config: ModelConfig, dtype: Any = "float32", context: int | None = None, batch: int = 1
) -> dict[str, int]:
    """Bytes needed to run ``config`` with weights in ``dtype`` (a torch dtype or a name like ``"q4_1"``),
    a KV cache for ``batch`` rows of ``context`` tokens; keys ``weights``, ``kv_cache``, ``activations``,
    ``overhead`` and ``total``."""
    name = _dtype_name(dtype)
    if name not in BYTES_PER_WEIGHT:
        raise ValueError(f"unknown weight precision {dtype!r}; known: {', '.join(BYTES_PER_WEIGHT)}")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    ctx = config.max_seq_len if context is None else context
    if ctx < 1:
        raise ValueError("context must be at least 1 token")
    n = param_count(config)
    weights = int(n * BYTES_PER_WEIGHT[name])
    # Embedding rows are looked up, not multiplied: quantized runtimes keep them as they are, so no saving
    # is assumed for them beyond the precision above.
    act_bytes = 4 if name == "float32" else 2
    kv_bytes = 2 if name in ("bfloat16", "float16") else 4
    kv_cache = 2 * config.n_layers * batch * ctx * config.kv_heads * config.hd * kv_bytes
    rope = config.max_seq_len * 2 * config.hd * 4
    chunk = min(ctx, 512)  # prefill processes the prompt in chunks of this order
    widest = max(config.dim * 4, config.ffn_dim * 3, config.n_heads * config.hd * 3)
    attn_scores = batch * config.n_heads * chunk * ctx * act_bytes
    activations = batch * chunk * widest * act_bytes + attn_scores + batch * config.vocab_size * 4 + rope
    total = weights + kv_cache + activations + RUNTIME_OVERHEAD
    return {
        "weights": weights,
        "kv_cache": kv_cache,
        "activations": activations,
        "overhead": RUNTIME_OVERHEAD,
        "total": total,
    }
