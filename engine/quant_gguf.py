"""Quantized layers straight from a GGUF file's blocks, so a Q4 model is not re-quantized on load.

GGUF Q4_0 and Q4_1 store each row in blocks of 32 weights: an fp16 scale ``d`` (and, for Q4_1, an fp16
minimum ``m``) and 32 4-bit codes, ``w = d·q + m`` (Q4_0: ``w = d·(q − 8)``). That is exactly
``AffineInt4`` with group size 32, i.e. PyTorch's int4pack kernel with ``scale = d`` and ``zero = m + 8d``:
the codes are taken as they are; only the scales are rounded to bf16, the kernel's type. Q8_0 (blocks of 32
int8 with one scale) has no exact int8pack twin (one scale per row), so such projections are re-quantized
per channel from the float weights, like every other type. Q/K rows are un-permuted on the raw blocks
(``unpermute_qk`` only reorders rows), before the codes are unpacked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.model import Transformer
from engine.quant import AffineInt4, Int4Linear, Int8Linear, _int4_group

_Q4_BLOCK = 32
_LAYER_PARTS = {  # our fused/plain projection → the GGUF tensors it is made of, in row order
    "attention.wqkv": ("attn_q", "attn_k", "attn_v"),
    "attention.wo": ("attn_output",),
    "feed_forward.w13": ("ffn_gate", "ffn_up"),
    "feed_forward.w2": ("ffn_down",),
}
_UNFUSED = {
    "attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
    "attention.wo": ("attention.wo",),
    "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3"),
    "feed_forward.w2": ("feed_forward.w2",),
}


def q4_blocks(raw: np.ndarray, kind: str) -> AffineInt4:
    """Unpack Q4_0/Q4_1 rows (rows, bytes) into codes (rows, cols) with per-32 scale and minimum."""
    rows = raw.shape[0]
    size = 18 if kind == "Q4_0" else 20
    b = np.ascontiguousarray(raw).reshape(rows, -1, size)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, blocks)
    if kind == "Q4_1":
        m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        qs = b[..., 4:20]
    else:
        m = -8.0 * d
        qs = b[..., 2:18]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)  # low nibbles are the first 16
    return AffineInt4(torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(m), _Q4_BLOCK)


def quantize_from_gguf(
    model: Transformer,
    path: str | Path,
    *,
    fallback: str = "int4",
    group_size: int = 32,
    head: str = "int8",
    kernel: str | None = None,
) -> dict[str, Any]:
    """Install quantized projections in ``model`` (loaded from ``path`` by ``engine.loader``): Q4_0/Q4_1 tensors
    go to int4 as stored; other types are quantized from the model's float weights with ``fallback``
    ("int4"/"int8"). Projections are fused (wqkv, w13) on the way. Returns a count per source kind."""
    from engine.gguf_loader import QK_PERMUTED_ARCHS, open_gguf, unpermute_qk

    if fallback not in ("int4", "int8") or head not in ("int4", "int8", "float"):
        raise ValueError("fallback must be int4 or int8; head int4, int8 or float")
    reader = open_gguf(path)
    tensors = {t.name: t for t in reader.tensors}
    arch_field = reader.fields.get("general.architecture")
    arch = bytes(arch_field.parts[-1]).decode() if arch_field is not None else "llama"
    cfg = model.config
    report = {"gguf_q4": 0, "requantized": 0}

    def raw_affine(name: str, heads: int | None) -> AffineInt4 | None:
        t = tensors.get(name)
        if t is None or t.tensor_type.name not in ("Q4_0", "Q4_1"):
            return None
        raw = np.asarray(t.data)
        if heads is not None and arch in QK_PERMUTED_ARCHS:
            raw = unpermute_qk(raw, heads)
        return q4_blocks(raw, t.tensor_type.name)

    # The fused float weight is built only where a projection is requantized: on the Q4 path it would be an
    # fp32 copy of every projection, concatenated and thrown away unread.
    def float_weight(layer: nn.Module, ours: str) -> torch.Tensor:
        return torch.cat([layer.get_submodule(n).weight.detach().float() for n in _UNFUSED[ours]])

    def fused_bias(layer: nn.Module, ours: str) -> torch.Tensor | None:
        biases = [layer.get_submodule(n).bias for n in _UNFUSED[ours]]
        if all(x is None for x in biases):
            return None
        return torch.cat([x.detach().float() for x in biases if x is not None])

    heads_of = {"attn_q": cfg.n_heads, "attn_k": cfg.kv_heads}
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            built: dict[str, nn.Module] = {}
            for ours, parts in _LAYER_PARTS.items():
                bias = fused_bias(layer, ours)
                blocks = [raw_affine(f"blk.{i}.{p}.weight", heads_of.get(p)) for p in parts]
                if all(b is not None for b in blocks):
                    built[ours] = Int4Linear(AffineInt4.cat(blocks), bias, kernel)  # type: ignore[arg-type]
                    report["gguf_q4"] += 1
                    continue
                w = float_weight(layer, ours)
                if fallback == "int8":
                    built[ours] = Int8Linear.from_float(w, bias, kernel)
                else:
                    built[ours] = Int4Linear.from_float(w, _int4_group(w.shape[1], group_size), bias, kernel)
                report["requantized"] += 1
            attn, ff = layer.attention, layer.feed_forward
            attn.wqkv, attn.wo = built["attention.wqkv"], built["attention.wo"]
            ff.w13, ff.w2 = built["feed_forward.w13"], built["feed_forward.w2"]
            attn.wq = attn.wk = attn.wv = None
            ff.w1 = ff.w3 = None
        if head != "float" and isinstance(model.output, nn.Linear):
            out_q4 = raw_affine("output.weight", None) if head == "int4" and "output.weight" in tensors else None
            if out_q4 is not None:
                model.output = Int4Linear(out_q4, kernel=kernel)
            else:
                w = model.output.weight.detach().float()
                if head == "int4":
                    model.output = Int4Linear.from_float(w, _int4_group(w.shape[1], group_size), kernel=kernel)
                else:
                    model.output = Int8Linear.from_float(w, kernel=kernel)
    model.quant = {"mode": "gguf", "fallback": fallback, "head": head, **report}  # type: ignore[assignment]
    return report
