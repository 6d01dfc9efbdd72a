"""How the model attends over its KV cache: the implementation is chosen once, when the cache is set up.

``engine.model.Attention`` projects, rotates and writes the cache, then calls ``attend(q, k, v, slot, input_pos,
length, mask)``: q (B, H, T, hd); k/v the whole cache (max_batch, Hkv, max_seq, hd), or without a cache this call's
own keys (B, Hkv, T, hd); rows ``[slot, slot + B)`` at ``input_pos`` (B, T), attending over ``length`` positions
under the additive ``mask`` (B, 1, T, length) — None for a causal forward or a single row decoding one token. It
returns (B, T, H·hd). ``choose`` picks one of:

- ``Sdpa``: PyTorch's ``scaled_dot_product_attention`` for every shape (training, prefill, eager decode). Inside a
  compiled step it hands a one-token call to ``grouped_decode`` instead, which Inductor fuses better.
- ``KernelDecode``: one-token calls on a float32 cache go to an enigma kernel set's ``decode_attention``
  (``engine.kernels``: it reads the cache rows in place, each row to its own position); other calls to SDPA.
  The op is registered with PyTorch, so a compiled step calls it too.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Attend(Protocol):
    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, slot: int, input_pos: Tensor, length: int, mask: Tensor | None
    ) -> Tensor: ...


def grouped_decode(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of one new token per row: q (B, H, 1, hd) against k/v (B, Hkv, L, hd) → (B, Hkv, H/Hkv, hd), with
    the query heads of each KV group stacked as rows (GQA without repeated keys).

    Measured on SmolLM2 with two threads: inside the compiled step, two matmuls and a softmax beat SDPA's CPU
    kernel (a step at 2/4/8 rows: 10.7/14.1/25.2 ms against 12.0/15.8/27.3; one row: 8.7 either way). Eager,
    SDPA is the faster of the two (16 against 28 µs a call at one row), so eager keeps it.
    ``mask`` (B, 1, 1, L) is additive (rows of a batch have different lengths).
    """
    b, h, _, hd = q.shape
    hkv = k.shape[1]
    qg = q.reshape(b, hkv, h // hkv, hd) * (1.0 / math.sqrt(hd))
    scores = torch.matmul(qg, k.transpose(-1, -2))  # (B, Hkv, G, L)
    if mask is not None:
        scores = scores + mask
    return torch.matmul(scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype), v)


class Sdpa:
    """PyTorch's attention over the rows and positions a call uses."""

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, slot: int, input_pos: Tensor, length: int, mask: Tensor | None
    ) -> Tensor:
        b, _, t, _ = q.shape
        k, v = k[slot : slot + b, :, :length], v[slot : slot + b, :, :length]  # (B, Hkv, L, hd)
        if t == 1 and torch.compiler.is_compiling():
            return grouped_decode(q, k, v, mask).reshape(b, 1, -1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and t > 1, enable_gqa=True)
        return y.transpose(1, 2).reshape(b, t, -1)  # (B, T, H*hd)

    def __repr__(self) -> str:
        return "Sdpa()"


class KernelDecode(Sdpa):
    """One-token calls through a kernel set's ``decode_attention`` op on the whole float32 cache; others SDPA."""

    def __init__(self, op: object) -> None:
        self.op = op

    def __call__(
        self, q: Tensor, k: Tensor, v: Tensor, slot: int, input_pos: Tensor, length: int, mask: Tensor | None
    ) -> Tensor:
        b, h, t, hd = q.shape
        if t != 1:
            return super().__call__(q, k, v, slot, input_pos, length, mask)
        y = self.op(q[:, :, 0], k, v, slot, input_pos[:, 0], 1.0 / math.sqrt(hd))  # type: ignore[operator]
        return y.reshape(b, 1, h * hd)

    def __repr__(self) -> str:
        return f"KernelDecode({self.op})"


SDPA = Sdpa()


def choose_attention(kernels: str | None, head_dim: int, dtype: torch.dtype) -> Attend:
    """The attention for a cache of ``dtype``: an enigma kernel set's where the model's weights were prepared for
    one (``kernels``), the cache is float32 and the kernel takes the head size; SDPA everywhere else."""
    if kernels is None or dtype != torch.float32 or head_dim % 16:
        return SDPA
    if kernels == "avx512" and head_dim not in (64, 128):
        return SDPA
    from engine import kernels as sets

    return KernelDecode(sets.ops(kernels).decode_attention)
