"""From a state dict in our parameter names to a ready ``Transformer`` — shared by every loader.

Each format loader (GGUF, Hugging Face, native checkpoint) only maps names and reads tensors; this module is
the one place that converts dtypes, checks that every weight is present with the right shape, and builds the
model without first filling it with random numbers (which for a 7B model would cost more than loading).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import MissingTensor, UnsupportedModel
from engine.model import FUSED, ModelConfig, Transformer, join_projections, precompute_rope, projection_rows

if TYPE_CHECKING:
    from engine.tokenizer import Tokenizer

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class ModelParts:
    """What a format loader hands back: config, weights in our names, tokenizer and provenance metadata."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    meta: dict[str, Any] = field(default_factory=dict)


def map_name(name: str, table: Mapping[str, str], layer: re.Pattern[str], layer_prefix: str) -> str | None:
    """Our parameter name for a file's tensor name through a loader's one mapping table, or ``None``.

    Per-layer entries are written once with ``{i}``; ``layer`` captures the layer number and the rest of the name,
    which is looked up as ``layer_prefix + rest``.
    """
    if name in table:
        return table[name]
    m = layer.match(name)
    if m:
        ours = table.get(layer_prefix + m.group(2))
        if ours is not None:
            return ours.replace("{i}", m.group(1))
    return None


def to_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The one dtype conversion of the loaders: norms and biases stay exact enough in any float type."""
    if dtype not in FLOAT_DTYPES:
        raise UnsupportedModel(f"cannot load weights as {dtype}; choose one of float32, bfloat16, float16")
    return t.to(dtype).contiguous()


def build_transformer(config: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype) -> Transformer:
    """A ``Transformer`` holding ``state`` (our names) in ``dtype``; raises ``MissingTensor`` naming what is absent.

    Projections stored separately in ``state`` are joined into the model's fused ones there (``state`` changes)."""
    if dtype not in FLOAT_DTYPES:
        raise UnsupportedModel(f"cannot load weights as {dtype}; choose one of float32, bfloat16, float16")
    with torch.device("meta"):
        model = Transformer(config)
    want = _wanted(model, state)
    missing = sorted(set(want) - set(state))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise MissingTensor(f"the model file lacks {len(missing)} weight(s): {shown}", {"missing": missing})
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise MissingTensor(
                f"weight {name} has shape {tuple(state[name].shape)}, the config needs {shape}",
                {"tensor": name, "shape": list(state[name].shape), "expected": list(shape)},
            )
    for i in range(config.n_layers):  # in place: the separate tensors are freed as each fused one is made
        join_projections(state, f"layers.{i}.")
    for name, _ in model.named_parameters(remove_duplicate=False):
        if name == "output.weight" and config.tie_embeddings:
            continue
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(to_dtype(state[name], dtype)))
    if config.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    model.rope = precompute_rope(config.hd, config.max_seq_len, config.rope_theta, config.rope_scaling)
    return model.eval()


def _wanted(model: Transformer, state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Every weight the model needs and its shape, named as ``state`` names it: a fused projection either fused
    (our checkpoints) or as the separate projections it is made of (GGUF, Hugging Face)."""
    rows = projection_rows(model.config)
    want: dict[str, tuple[int, ...]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name == "output.weight" and model.config.tie_embeddings:
            continue
        prefix, fused, suffix = _split_fused(name)
        if fused is None or name in state:
            want[name] = tuple(p.shape)
            continue
        for part in FUSED[fused]:
            want[prefix + part + suffix] = (rows[part], *p.shape[1:])
    return want


def _split_fused(name: str) -> tuple[str, str | None, str]:
    """``layers.3.attention.wqkv.weight`` → (``layers.3.``, ``attention.wqkv``, ``.weight``); others: no fused part."""
    for fused in FUSED:
        head, sep, suffix = name.partition("." + fused + ".")
        if sep:
            return head + ".", fused, "." + suffix
    return name, None, ""
