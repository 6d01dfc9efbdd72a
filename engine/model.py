"""The Llama-family transformer: one file that reads top to bottom as the architecture.

ModelConfig (+ presets) → RMSNorm → RoPE helpers → KVCache → Attention (GQA) → FeedForward (SwiGLU) → Block →
Transformer. Names follow the papers and Meta's reference (``wq wk wv wo``, ``w1 w2 w3``, ``n_kv_heads``) so
the code can be held against them; wq/wk/wv and w1/w3 are stored fused (``wqkv``, ``w13``), and checkpoints in
the usual names are joined as they load. RoPE uses the "rotate half" (GPT-NeoX / Hugging Face) layout; loaders for
formats that store the interleaved layout (GGUF llama) permute q/k weights once at load time.

Batching: the KV cache has ``max_batch`` rows (slots). A forward call works on rows ``[slot, slot + B)`` of
the cache, each row at its own positions (``input_pos``), so a scheduler can prefill one request into its
slot and then decode every active request in one step with per-row lengths. How attention reads the cache
(PyTorch's SDPA or an enigma CPU kernel) is ``engine.attention``'s choice, made once when the cache is set up; a
compiled decode step lives in ``engine.compile``. The model owns no infrastructure: no threads, no logging
setup, no file formats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.attention import SDPA, Attend, choose_attention


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None → same as n_heads (plain multi-head attention)
    ffn_dim: int = 11008  # hidden size of the SwiGLU feed-forward
    head_dim: int | None = None  # None → dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # {"type": "linear"|"llama3"|"dynamic"|"yarn", "factor": f, ...} for extended context
    rope_scaling: dict[str, Any] | None = None
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    attn_bias: bool = False  # q/k/v biases (Qwen2)
    mlp_bias: bool = False
    arch: str = "llama"  # family name, kept for loaders and model cards
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def kv_heads(self) -> int:
        assert self.n_kv_heads is not None
        return self.n_kv_heads

    @property
    def hd(self) -> int:
        assert self.head_dim is not None
        return self.head_dim

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset by name (``pi_zero`` … ``omega``), with any field overridden."""
        try:
            preset = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
        return replace(preset, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _p(vocab: int, dim: int, layers: int, heads: int, kv: int, ffn: int, ctx: int, tie: bool = True) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv,
        ffn_dim=ffn,
        max_seq_len=ctx,
        tie_embeddings=tie,
        rope_theta=10000.0 if dim < 2048 else 500000.0,
    )


# Presets from a Pi Zero toy to a 70B-class model. Parameter counts are asserted in tests.
PRESETS: dict[str, ModelConfig] = {
    "pi_zero": _p(2048, 64, 6, 4, 2, 256, 512),
    "pi_nano": _p(4096, 128, 4, 4, 2, 384, 1024),
    "pi_micro": _p(8192, 256, 6, 8, 4, 768, 1024),
    "pi": _p(16384, 384, 8, 6, 2, 1024, 2048),
    "tiny": _p(32000, 512, 8, 8, 4, 1536, 2048),
    "mini": _p(49152, 576, 30, 9, 3, 1536, 8192),  # SmolLM2-135M shape
    "small": _p(49152, 960, 32, 15, 5, 2560, 8192),  # SmolLM2-360M shape
    "base": _p(32000, 1536, 24, 16, 8, 4096, 4096),
    "medium": _p(32000, 2048, 22, 32, 4, 5632, 4096),  # TinyLlama-1.1B shape
    "large": _p(128256, 3072, 28, 24, 8, 8192, 8192),  # Llama-3.2-3B shape
    "xl": _p(32000, 4096, 32, 32, 32, 11008, 4096, tie=False),  # Llama-2-7B shape
    "xxl": _p(128256, 4096, 32, 32, 8, 14336, 8192, tie=False),  # Llama-3-8B shape
    "titan": _p(32000, 5120, 40, 40, 40, 13824, 4096, tie=False),  # Llama-2-13B shape
    "colossus": _p(32000, 6656, 60, 52, 52, 17920, 4096, tie=False),  # LLaMA-30B shape
    "omega": _p(128256, 8192, 80, 64, 8, 28672, 8192, tie=False),  # Llama-3-70B shape
}


def param_count(config: ModelConfig) -> int:
    """Exact parameter count of ``Transformer(config)`` without building it."""
    d, hd = config.dim, config.hd
    q, kv = config.n_heads * hd, config.kv_heads * hd
    attn = d * q + 2 * d * kv + q * d + ((q + 2 * kv) if config.attn_bias else 0)
    mlp = 3 * d * config.ffn_dim + ((2 * config.ffn_dim + d) if config.mlp_bias else 0)
    per_layer = attn + mlp + 2 * d
    emb = config.vocab_size * d
    head = 0 if config.tie_embeddings else config.vocab_size * d
    return emb + config.n_layers * per_layer + d + head


# --------------------------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 for stability whatever the activation dtype (as the reference does).
        # One call instead of five: at 135M parameters the per-op overhead, not the FLOPs, sets the pace.
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


# --------------------------------------------------------------------------------------------------------------
def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> tuple[Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the attention scale factor for the chosen RoPE scaling."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    mscale = 1.0
    kind = (scaling or {}).get("type") or (scaling or {}).get("rope_type")
    if not scaling or kind in (None, "default", "none"):
        return inv.float(), mscale
    factor = float(scaling.get("factor", 1.0))
    if kind == "linear":
        inv = inv / factor
    elif kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
        wavelen = 2 * math.pi / inv
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        mid = (1 - smooth) * inv / factor + smooth * inv
        is_mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        inv = torch.where(is_mid, mid, scaled)
    elif kind == "yarn":
        old_ctx = float(scaling.get("original_max_position_embeddings", 4096))
        beta_fast = float(scaling.get("beta_fast", 32.0))
        beta_slow = float(scaling.get("beta_slow", 1.0))

        def dim_for(rot: float) -> float:
            return (head_dim * math.log(old_ctx / (rot * 2 * math.pi))) / (2 * math.log(theta))

        lo = max(math.floor(dim_for(beta_fast)), 0)
        hi = min(math.ceil(dim_for(beta_slow)), head_dim - 1)
        ramp = (torch.arange(head_dim // 2, dtype=torch.float64) - lo) / max(hi - lo, 1e-3)
        extrap = 1 - ramp.clamp(0, 1)
        inv = (inv / factor) * (1 - extrap) + inv * extrap
        mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    elif kind == "freq_factors":
        # Per-frequency divisors as GGUF files store them (llama.cpp's rope_freqs.weight, e.g. Llama 3.1).
        inv = inv / torch.tensor(scaling["factors"], dtype=torch.float64)
    elif kind == "dynamic":
        # Dynamic NTK: stretch theta for the configured factor (static here; the cache length is fixed).
        theta = theta * factor ** (head_dim / (head_dim - 2))
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    else:
        raise ValueError(f"unsupported rope scaling type {kind!r}")
    return inv.float(), mscale


def precompute_rope(head_dim: int, max_seq: int, theta: float, scaling: dict[str, Any] | None) -> Tensor:
    """cos/sin table of shape (max_seq, 2, head_dim) in the rotate-half layout."""
    inv, mscale = rope_inv_freq(head_dim, theta, scaling)
    t = torch.arange(max_seq, dtype=torch.float32)
    freqs = torch.outer(t, inv)  # (S, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (S, hd)
    return torch.stack([emb.cos() * mscale, emb.sin() * mscale], dim=1)


def rope_for(table: Tensor, input_pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sign-folded sin (B, T, 1, hd) at ``input_pos`` (B, T) from a ``precompute_rope`` table.

    The first half of sin is negated once here, so that ``rotate_half(x) * sin`` becomes ``roll(x) * sin'``:
    the same arithmetic with fewer ops per layer.
    """
    rope = table[input_pos]  # (B, T, 2, hd)
    cos = rope[:, :, 0].unsqueeze(2).to(dtype)
    sin = rope[:, :, 1].unsqueeze(2)
    half = sin.shape[-1] // 2
    return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).to(dtype)


def apply_rotary_emb(x: Tensor, cos: Tensor, sin_folded: Tensor) -> Tensor:
    """Rotate-half RoPE: x (B, T, H, hd); cos/sin_folded (B, T, 1, hd) from ``rope_for``."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_folded


# --------------------------------------------------------------------------------------------------------------
def os_zeroed(shape: tuple[int, ...], dtype: torch.dtype, align: int = 64) -> Tensor:
    """A zero tensor whose pages the OS zeroes on first touch (calloc, through numpy), 64-byte aligned.

    ``torch.zeros`` writes every byte up front: 2.7 s for SmolLM2's 1.5 GB cache (8 rows × 4096 positions) at
    every start, and all of it resident at once although a short conversation touches a few MB of it."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = torch.from_numpy(np.zeros(nbytes + align, dtype=np.uint8))
    start = -raw.data_ptr() % align
    return raw[start : start + nbytes].view(dtype).view(shape)


class KVCache(nn.Module):
    """Preallocated keys/values for ``max_batch`` rows of up to ``max_seq`` positions each."""

    k: Tensor
    v: Tensor

    def __init__(self, max_batch: int, max_seq: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        shape = (max_batch, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", os_zeroed(shape, dtype), persistent=False)
        self.register_buffer("v", os_zeroed(shape, dtype), persistent=False)

    def update(self, slot: int, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k/v (B, Hkv, T, hd) into rows [slot, slot + B) at ``input_pos`` (B, T); return the whole cache.

        One ``index_put_`` into the whole buffer, so that a compiled step writes just these positions in place (a
        write into a view of the buffer made Inductor copy the rows back whole: 11.2 → 8.7 ms a step with an
        8-row cache on SmolLM2). An eager single row takes ``index_copy_``: 6 µs less a call, 0.36 ms of a
        30-layer step."""
        b = input_pos.shape[0]
        if b == 1 and not torch.compiler.is_compiling():
            self.k[slot].index_copy_(1, input_pos[0], k[0])
            self.v[slot].index_copy_(1, input_pos[0], v[0])
        else:
            rows = torch.arange(slot, slot + b, device=input_pos.device)[:, None]  # (B, 1) broadcast with (B, T)
            self.k[rows, :, input_pos] = k.transpose(1, 2)  # the indexed shape is (B, T, Hkv, hd)
            self.v[rows, :, input_pos] = v.transpose(1, 2)
        return self.k, self.v


# --------------------------------------------------------------------------------------------------------------
# wq/wk/wv and w1/w3 are stored as one projection each (one matmul instead of three or two: at 135M parameters
# the per-call overhead is a real share of a token). Checkpoints in the usual names are joined as they load.
FUSED: dict[str, tuple[str, ...]] = {
    "attention.wqkv": ("attention.wq", "attention.wk", "attention.wv"),
    "feed_forward.w13": ("feed_forward.w1", "feed_forward.w3"),
}


def projection_rows(c: ModelConfig) -> dict[str, int]:
    """Output rows of each projection a fused one is made of, by its name in a block."""
    q, kv = c.n_heads * c.hd, c.kv_heads * c.hd
    attention = dict(zip(FUSED["attention.wqkv"], (q, kv, kv), strict=True))
    return attention | dict.fromkeys(FUSED["feed_forward.w13"], c.ffn_dim)


def join_projections(state: dict[str, Tensor], prefix: str) -> None:
    """Replace a block's separate projections in ``state`` (names under ``prefix``) by the fused ones, in place;
    a projection with a part missing is left as it is (the loader names what is missing)."""
    for fused, parts in FUSED.items():
        for suffix in (".weight", ".bias"):
            names = [prefix + part + suffix for part in parts]
            if all(n in state for n in names):
                state[prefix + fused + suffix] = torch.cat([state.pop(n) for n in names])


class Attention(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.kv_heads, c.hd
        self.wqkv = nn.Linear(c.dim, (c.n_heads + 2 * c.kv_heads) * c.hd, bias=c.attn_bias)
        self.wo = nn.Linear(c.n_heads * c.hd, c.dim, bias=False)
        self.cache: KVCache | None = None
        self.attend: Attend = SDPA  # chosen with the cache (Transformer.setup_cache)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, input_pos: Tensor, slot: int, length: int
    ) -> Tensor:
        b, t, _ = x.shape
        h, hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.wqkv(x).view(b, t, h + 2 * hkv, hd)
        q, k = apply_rotary_emb(qkv[:, :, : h + hkv], cos, sin).split((h, hkv), dim=2)  # one RoPE for q and k
        v = qkv[:, :, h + hkv :]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H or Hkv, T, hd)
        if self.cache is not None:
            k, v = self.cache.update(slot, input_pos, k, v)  # (max_batch, Hkv, max_seq, hd)
        return self.wo(self.attend(q, k, v, slot, input_pos, length, mask))  # attend: (B, T, H*hd)


class FeedForward(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.w13 = nn.Linear(c.dim, 2 * c.ffn_dim, bias=c.mlp_bias)  # gate (w1) and up (w3)
        self.w2 = nn.Linear(c.ffn_dim, c.dim, bias=c.mlp_bias)  # down

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.feed_forward = FeedForward(c)
        self.register_load_state_dict_pre_hook(_join_on_load)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, input_pos: Tensor, slot: int, length: int
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, input_pos, slot, length)
        return h + self.feed_forward(self.ffn_norm(h))


def _join_on_load(module: nn.Module, state: dict[str, Tensor], prefix: str, *args: Any) -> None:
    join_projections(state, prefix)


@dataclass
class CacheInfo:
    max_batch: int = 0
    max_seq: int = 0
    dtype: torch.dtype = field(default=torch.float32)


class Transformer(nn.Module):
    rope: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # On the meta device a loader fills the weights and the RoPE table (engine.weights): skip the random init
        # and the table, whose meta-device paths import torch._dynamo, 1–2 s of every start.
        skeleton = torch.get_default_device().type == "meta"
        if skeleton:
            weight = torch.empty(config.vocab_size, config.dim)
            self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim, _weight=weight)
        else:
            self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            output.weight = self.tok_embeddings.weight
        self.output: nn.Module = output  # a quantized layer replaces it at load (engine.quant)
        rope = (
            torch.empty(config.max_seq_len, 2, config.hd)
            if skeleton
            else precompute_rope(config.hd, config.max_seq_len, config.rope_theta, config.rope_scaling)
        )
        self.register_buffer("rope", rope, persistent=False)
        self.cache_info = CacheInfo()
        # The CPU kernel set the weights were laid out for (engine.quant.prepare_for_inference), or None: it
        # decides which attention a cache is served with.
        self.kernels: str | None = None

    @property
    def blocks(self) -> Sequence[Block]:
        return cast("Sequence[Block]", self.layers)

    def setup_cache(self, max_batch: int, max_seq: int | None = None, dtype: torch.dtype | None = None) -> None:
        """Allocate the KV cache for ``max_batch`` concurrent rows of ``max_seq`` positions, and choose the
        attention that reads it (``engine.attention.choose``)."""
        max_seq = min(max_seq or self.config.max_seq_len, self.config.max_seq_len)
        dtype = dtype or self.tok_embeddings.weight.dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.float32
        attend = choose_attention(self.kernels, self.config.hd, dtype)
        for block in self.blocks:
            block.attention.cache = KVCache(max_batch, max_seq, self.config.kv_heads, self.config.hd, dtype)
            block.attention.attend = attend
        self.cache_info = CacheInfo(max_batch, max_seq, dtype)

    def drop_cache(self) -> None:
        for block in self.blocks:
            block.attention.cache = None
            block.attention.attend = SDPA
        self.cache_info = CacheInfo()

    def caches(self) -> list[KVCache]:
        """Each layer's KV cache, in layer order (allocated by ``setup_cache``)."""
        caches = [block.attention.cache for block in self.blocks]
        if any(c is None for c in caches):
            raise ValueError("the model has no KV cache (setup_cache)")
        return cast("list[KVCache]", caches)

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy one cache row to another (the scheduler compacts rows when a request leaves)."""
        for cache in self.caches():
            cache.k[dst, :, :length] = cache.k[src, :, :length]
            cache.v[dst, :, :length] = cache.v[src, :, :length]

    def forward(
        self,
        tokens: Tensor,
        input_pos: Tensor | None = None,
        *,
        slot: int = 0,
        last_only: bool = False,
        length: int | None = None,
    ) -> Tensor:
        """tokens: (B, T) → logits (B, T, vocab) — or (B, 1, vocab) with ``last_only``.

        ``input_pos`` (B, T) gives each token's position; rows map to cache rows ``[slot, slot + B)``.
        Without a cache the call is a plain causal forward over positions 0..T-1.

        ``length`` is the number of cache positions the call attends over: its largest position + 1. A caller that
        built ``input_pos`` from Python ints knows it; passing it means no value is read back from a tensor, which
        on an accelerator is a device→host sync in every decode step. Without it, it is read from ``input_pos``.
        """
        b, t = tokens.shape
        if input_pos is None:
            input_pos = torch.arange(t, device=tokens.device).expand(b, t)
            length = t
        if self.cache_info.max_batch > 0:
            if slot + b > self.cache_info.max_batch:
                raise ValueError(f"rows {slot}..{slot + b - 1} exceed the cache's {self.cache_info.max_batch}")
            if length is None:
                length = int(input_pos.max()) + 1
            elif length < 1:
                raise ValueError(f"length must be at least 1, not {length}")
            if length > self.cache_info.max_seq:
                raise ValueError(f"position {length - 1} exceeds the cache length {self.cache_info.max_seq}")
        else:
            length = t
            if t > self.config.max_seq_len:
                raise ValueError(f"{t} tokens exceed the context length {self.config.max_seq_len}")
        return self.forward_positions(tokens, input_pos, slot, length, last_only)

    def forward_positions(self, tokens: Tensor, input_pos: Tensor, slot: int, length: int, last_only: bool) -> Tensor:
        """The forward pass once positions are checked: tensor code only (no host syncs, no Python-side
        values read from tensors), so that it traces whole (``engine.compile``)."""
        b, t = tokens.shape
        cos, sin = rope_for(self.rope, input_pos, self.tok_embeddings.weight.dtype)  # (B, T, 1, hd) each
        mask: Tensor | None = None
        if self.cache_info.max_batch > 0 and (b > 1 or t > 1):  # one row decoding one token sees all its keys
            # Key j is visible to the query at position p iff j <= p: per-row lengths for free. Additive, built
            # once here: SDPA would otherwise convert a boolean mask in every layer.
            keys = torch.arange(length, device=tokens.device)
            visible = keys[None, None, None, :] <= input_pos[:, None, :, None]  # (B, 1, T, L)
            mask = torch.zeros(visible.shape, dtype=cos.dtype).masked_fill_(~visible, float("-inf"))
        x = self.tok_embeddings(tokens)  # (B, T, dim)
        for block in self.blocks:
            x = block(x, cos, sin, mask, input_pos, slot, length)
        if last_only:
            x = x[:, -1:]
        return self.output(self.norm(x)).float()
