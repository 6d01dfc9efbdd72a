"""Sampling: pure functions from logits to next tokens, apart from the forward pass so they are tested alone.

Everything works on a batch of rows ``(B, V)`` where each row carries its own settings, so the scheduler samples
all active requests of a decode step in a handful of vectorised ops. The order is the usual one (llama.cpp,
Hugging Face): penalties → temperature → top-k → min-p → top-p → draw. Filters run on the candidates sorted by
logit (``torch.topk``), which is also what makes top-p cheap when top-k already narrowed the set.

Penalty semantics: ``repetition_penalty`` is the CTRL/Hugging Face one (divide a positive logit, multiply a
negative one) over every token seen so far, prompt included; ``presence_penalty`` and ``frequency_penalty`` are
OpenAI's (subtract a flat amount once a token appeared in the completion, and an amount per occurrence).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings. ``temperature == 0`` means greedy; 0 for ``top_k`` means off.

    A typed record, not a validator: what a request may carry — ranges, defaults, help — is defined once with
    the protocol (``bus.sampling.OPTIONS``), and the daemon builds this record from options checked there. The
    defaults below are the values at which each stage does nothing, for library callers (tests, benchmarks);
    ``tests/engine/test_sampling_definition.py`` holds the field set and the defaults equal to the protocol's.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 512
    stop: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    def make_generator(self) -> torch.Generator:
        """A private RNG for the request: seeded ones replay exactly, whatever else shares the batch."""
        g = torch.Generator()
        g.manual_seed(self.seed if self.seed is not None else random.getrandbits(63))
        return g


# ---------------------------------------------------------------------------------------------------------------
def _col(values: Tensor | Sequence[float] | float, b: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-row settings as a (B, 1) column, from a scalar, a sequence or a tensor."""
    t = torch.as_tensor(values, dtype=dtype)
    return t.expand(b).reshape(b, 1) if t.dim() == 0 else t.reshape(b, 1)


def apply_penalties(
    logits: Tensor,
    counts: Tensor,
    seen: Tensor,
    repetition: Tensor | Sequence[float] | float = 1.0,
    presence: Tensor | Sequence[float] | float = 0.0,
    frequency: Tensor | Sequence[float] | float = 0.0,
) -> Tensor:
    """Penalised copy of ``logits`` (B, V). ``counts`` (B, V): occurrences in the completion; ``seen`` (B, V) bool:
    tokens in prompt or completion (what the repetition penalty looks at)."""
    b = logits.shape[0]
    rep = _col(repetition, b)
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    out = torch.where(seen, penalised, logits)
    counts = counts.to(logits.dtype)
    return out - _col(frequency, b) * counts - _col(presence, b) * (counts > 0).to(logits.dtype)


def apply_temperature(logits: Tensor, temperature: Tensor | Sequence[float] | float) -> Tensor:
    """Divide each row by its temperature; rows at 0 (greedy) are left as they are."""
    t = _col(temperature, logits.shape[0])
    return logits / torch.where(t > 0, t, torch.ones_like(t))


def sorted_candidates(logits: Tensor, top_k: Tensor | Sequence[int] | int = 0) -> tuple[Tensor, Tensor]:
    """The logits of each row sorted descending, with their token ids: (B, K) each. K is the largest top-k of the
    batch, or the whole vocabulary when any row has top-k off (0)."""
    k = _col(top_k, logits.shape[0], torch.long)
    vocab = logits.shape[-1]
    kmax = vocab if bool((k <= 0).any()) else min(int(k.max()), vocab)
    return torch.topk(logits, kmax, dim=-1, sorted=True)


def filter_sorted(
    vals: Tensor,
    top_k: Tensor | Sequence[int] | int = 0,
    top_p: Tensor | Sequence[float] | float = 1.0,
    min_p: Tensor | Sequence[float] | float = 0.0,
) -> Tensor:
    """Set to -inf the sorted candidates (B, K) that top-k, min-p and top-p remove; the best one always stays."""
    b, kk = vals.shape
    rank = torch.arange(kk).expand(b, kk)
    k = _col(top_k, b, torch.long)
    drop = (k > 0) & (rank >= k)
    vals = vals.masked_fill(drop, float("-inf"))
    probs = torch.softmax(vals, dim=-1)
    mp = _col(min_p, b)
    drop = drop | (probs < mp * probs[:, :1])
    tp = _col(top_p, b)
    if bool((tp < 1.0).any()):
        probs = torch.softmax(vals.masked_fill(drop, float("-inf")), dim=-1)
        before = probs.cumsum(-1) - probs  # mass of the better candidates
        drop = drop | (before >= tp)
    drop[:, 0] = False
    return vals.masked_fill(drop, float("-inf"))


def filter_logits(
    logits: Tensor,
    top_k: Tensor | Sequence[int] | int = 0,
    top_p: Tensor | Sequence[float] | float = 1.0,
    min_p: Tensor | Sequence[float] | float = 0.0,
) -> Tensor:
    """Full-width (B, V) logits with the removed tokens at -inf (the same filters the sampler applies)."""
    vals, idx = sorted_candidates(logits, top_k)
    vals = filter_sorted(vals, top_k, top_p, min_p)
    return torch.full_like(logits, float("-inf")).scatter_(-1, idx, vals)


def draw(probs: Tensor, generators: Sequence[torch.Generator | None]) -> Tensor:
    """One index per row of ``probs`` (B, K) by inverse CDF, each row with its own RNG (B draws, one search)."""
    b = probs.shape[0]
    u = torch.cat([torch.rand(1, generator=g) for g in generators]) if b else torch.empty(0)
    cdf = probs.cumsum(-1)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


@dataclass
class BatchSettings:
    """The per-row settings of one decode step as columns, built once per batch composition."""

    temperature: Tensor
    top_k: Tensor
    top_p: Tensor
    min_p: Tensor
    repetition: Tensor
    presence: Tensor
    frequency: Tensor
    all_greedy: bool
    any_penalty: bool

    @classmethod
    def of(cls, params: Sequence[SamplingParams]) -> BatchSettings:
        def col(name: str, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.tensor([getattr(p, name) for p in params], dtype=dtype)

        return cls(
            temperature=col("temperature"),
            top_k=col("top_k", torch.long),
            top_p=col("top_p"),
            min_p=col("min_p"),
            repetition=col("repetition_penalty"),
            presence=col("presence_penalty"),
            frequency=col("frequency_penalty"),
            all_greedy=all(p.greedy for p in params),
            any_penalty=any(p.uses_penalties for p in params),
        )


def sample_batch(
    logits: Tensor,
    settings: BatchSettings,
    generators: Sequence[torch.Generator | None],
    counts: Tensor | None = None,
    seen: Tensor | None = None,
) -> Tensor:
    """Next token per row of ``logits`` (B, V): each row with its own settings and RNG. ``counts``/``seen`` (B, V)
    are needed only when some row uses a penalty."""
    logits = logits.float()
    if settings.any_penalty:
        if counts is None or seen is None:
            raise ValueError("penalties need the counts and seen tensors")
        logits = apply_penalties(logits, counts, seen, settings.repetition, settings.presence, settings.frequency)
    greedy_tokens = logits.argmax(-1)
    if settings.all_greedy:
        return greedy_tokens
    logits = apply_temperature(logits, settings.temperature)
    vals, idx = sorted_candidates(logits, settings.top_k)
    vals = filter_sorted(vals, settings.top_k, settings.top_p, settings.min_p)
    probs = torch.softmax(vals, dim=-1)
    picked = idx.gather(-1, draw(probs, generators).unsqueeze(-1)).squeeze(-1)
    return torch.where(settings.temperature > 0, picked, greedy_tokens)


def sample(
    logits: Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    counts: Tensor | None = None,
    seen: Tensor | None = None,
) -> int:
    """The next token for one request from its logits (V,)."""
    row = logits.reshape(1, -1)
    c = counts.reshape(1, -1) if counts is not None else None
    s = seen.reshape(1, -1) if seen is not None else None
    return int(sample_batch(row, BatchSettings.of([params]), [generator], c, s)[0])
