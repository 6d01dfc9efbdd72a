"""Quantized layers straight from a GGUF file's blocks, so a Q4 model is not re-quantized on load.

GGUF Q4_0 and Q4_1 store each row in blocks of 32 weights: an fp16 scale ``d`` (and, for Q4_1, an fp16
minimum ``m``) and 32 4-bit codes, ``w = d·q + m`` (Q4_0: ``w = d·(q − 8)``). That is exactly
``AffineInt4`` with group size 32, i.e. PyTorch's int4pack kernel with ``scale = d`` and ``zero = m + 8d``:
the codes are taken as they are; only the scales are rounded to bf16, the kernel's type. Q8_0 (blocks of 32
int8 with one scale) has no exact int8pack twin (one scale per row), so such projections are re-quantized
per channel from the float weights, like every other type. Q/K rows are un-permuted on the raw blocks
(``unpermute_qk`` only reorders rows), before the codes are unpacked, where the file's family says
(``engine.families``); tensor names and block sizes come from the ``gguf`` package's constants.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, MODEL_TENSOR, GGMLQuantizationType, Keys
from torch import nn

from engine.families import LLAMA, gguf_family, gguf_tensor_name, unpermute_qk
from engine.model import Transformer
from engine.quant import AffineInt4, Int4Linear, Int8Linear, _int4_group

Q4_TYPES = (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1)
_LAYER_PARTS = {  # our fused/plain projection → the GGUF tensors it is made of, in row order
    "attention.wqkv": (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V),
    "attention.wo": (MODEL_TENSOR.ATTN_OUT,),
    "feed_forward.w13": (MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP),
    "feed_forward.w2": (MODEL_TENSOR.FFN_DOWN,),
}


def q4_blocks(raw: np.ndarray, kind: str) -> AffineInt4:
    """Unpack Q4_0/Q4_1 rows (rows, bytes) into codes (rows, cols) with per-block scale and minimum.

    A block is an fp16 ``d`` (Q4_1: then an fp16 ``m``) and ``block / 2`` bytes of codes, low nibbles first."""
    qtype = GGMLQuantizationType[kind]
    if qtype not in Q4_TYPES:
        raise ValueError(f"q4_blocks unpacks Q4_0 and Q4_1, not {kind}")
    block, size = GGML_QUANT_SIZES[qtype]
    rows = raw.shape[0]
    b = np.ascontiguousarray(raw).reshape(rows, -1, size)
    d = b[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)  # (rows, blocks)
    if qtype == GGMLQuantizationType.Q4_1:
        m = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    else:
        m = -8.0 * d
    qs = b[..., size - block // 2 :]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, -1)  # low nibbles are the first half
    return AffineInt4(torch.from_numpy(codes), torch.from_numpy(d), torch.from_numpy(m), block)


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
    ("int4"/"int8"). Returns a count per source kind."""
    from engine.gguf_loader import open_gguf

    if fallback not in ("int4", "int8") or head not in ("int4", "int8", "float"):
        raise ValueError("fallback must be int4 or int8; head int4, int8 or float")
    reader = open_gguf(path)
    tensors = {t.name: t for t in reader.tensors}
    arch_field = reader.fields.get(Keys.General.ARCHITECTURE)
    family = gguf_family(arch_field.contents()) if arch_field is not None else LLAMA
    cfg = model.config
    report = {"gguf_q4": 0, "requantized": 0}

    def raw_affine(kind: MODEL_TENSOR, layer: int | None) -> AffineInt4 | None:
        t = tensors.get(gguf_tensor_name(kind, layer))
        if t is None or t.tensor_type not in Q4_TYPES:
            return None
        raw = np.asarray(t.data)
        heads = family.qk_heads(kind, cfg)
        if heads is not None:
            raw = unpermute_qk(raw, heads)
        return q4_blocks(raw, t.tensor_type.name)

    def float_linear(layer: nn.Module, ours: str) -> nn.Linear:
        return cast(nn.Linear, layer.get_submodule(ours))  # still the loader's float layer here

    def float_weight(layer: nn.Module, ours: str) -> torch.Tensor:
        return float_linear(layer, ours).weight.detach().float()

    def fused_bias(layer: nn.Module, ours: str) -> torch.Tensor | None:
        bias = float_linear(layer, ours).bias
        return None if bias is None else bias.detach().float()

    with torch.no_grad():
        for i, layer in enumerate(model.blocks):
            built: dict[str, nn.Module] = {}
            for ours, parts in _LAYER_PARTS.items():
                bias = fused_bias(layer, ours)
                stored = [a for kind in parts if (a := raw_affine(kind, i)) is not None]
                if len(stored) == len(parts):
                    built[ours] = Int4Linear(AffineInt4.cat(stored), bias, kernel)
                    report["gguf_q4"] += 1
                    continue
                w = float_weight(layer, ours)
                if fallback == "int8":
                    built[ours] = Int8Linear.from_float(w, bias, kernel)
                else:
                    built[ours] = Int4Linear.from_float(w, _int4_group(w.shape[1], group_size), bias, kernel)
                report["requantized"] += 1
            for ours, module in built.items():
                owner, _, name = ours.rpartition(".")
                setattr(layer.get_submodule(owner), name, module)
        if head != "float" and isinstance(model.output, nn.Linear):
            out_q4 = raw_affine(MODEL_TENSOR.OUTPUT, None) if head == "int4" else None
            if out_q4 is not None:
                model.output = Int4Linear(out_q4, kernel=kernel)
            else:
                w = model.output.weight.detach().float()
                if head == "int4":
                    model.output = Int4Linear.from_float(w, _int4_group(w.shape[1], group_size), kernel=kernel)
                else:
                    model.output = Int8Linear.from_float(w, kernel=kernel)
    return report
