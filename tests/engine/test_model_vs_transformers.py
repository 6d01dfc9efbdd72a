"""Our Transformer against transformers' Llama/Mistral/Qwen2 on the same tiny random weights (fp32): whole-sequence
logits, the KV cache path (prefill then token-by-token decode), and batched decode of rows at different lengths."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.loader import load_model

from .conftest import VARIANTS

TOL = 1e-3
VARIANT_NAMES = sorted(VARIANTS)


def _ids(n: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def _reference(tiny, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return tiny.hf(ids).logits.float()


@pytest.fixture(scope="module")
def loaded(tiny_models):
    cache = {}

    def get(name: str):
        if name not in cache:
            tiny = tiny_models(name)
            cache[name] = (tiny, load_model(tiny.path))
        return cache[name]

    return get


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_full_sequence_logits_match_transformers(loaded, variant):
    tiny, ours = loaded(variant)
    ids = _ids(40, tiny.vocab_size, seed=1)
    with torch.no_grad():
        got = ours.model(ids)
    assert (got - _reference(tiny, ids)).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_cached_prefill_then_decode_matches_transformers(loaded, variant):
    tiny, ours = loaded(variant)
    ids = _ids(24, tiny.vocab_size, seed=2)
    want = _reference(tiny, ids)[0]
    model = ours.model
    model.setup_cache(max_batch=1, max_seq=64)
    try:
        with torch.no_grad():
            prefill = model(ids[:, :10], torch.arange(10)[None])
            steps = [model(ids[:, p : p + 1], torch.tensor([[p]])) for p in range(10, 24)]
    finally:
        model.drop_cache()
    got = torch.cat([prefill[0], *(s[0] for s in steps)])
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_batched_decode_of_rows_at_different_lengths_matches_transformers(loaded, variant):
    tiny, ours = loaded(variant)
    seqs = [_ids(n, tiny.vocab_size, seed=10 + n)[0] for n in (5, 13, 9)]
    model = ours.model
    model.setup_cache(max_batch=4, max_seq=64)
    try:
        with torch.no_grad():
            # Prefill each prompt but its last 3 tokens into its own row (slots 1..3; slot 0 stays idle).
            for row, s in enumerate(seqs, start=1):
                n = len(s) - 3
                model(s[None, :n], torch.arange(n)[None], slot=row)
            outs = []
            for step in range(3):
                tokens = torch.stack([s[len(s) - 3 + step] for s in seqs])[:, None]  # (3, 1)
                pos = torch.tensor([[len(s) - 3 + step] for s in seqs])
                outs.append(model(tokens, pos, slot=1)[:, 0])  # (3, vocab)
    finally:
        model.drop_cache()
    for row, s in enumerate(seqs):
        want = _reference(tiny, s[None])[0, -3:]
        got = torch.stack([o[row] for o in outs])
        assert (got - want).abs().max().item() <= TOL


def test_last_only_returns_the_last_position(loaded):
    tiny, ours = loaded("llama")
    ids = _ids(12, tiny.vocab_size, seed=3)
    with torch.no_grad():
        full = ours.model(ids)
        last = ours.model(ids, last_only=True)
    assert last.shape == (1, 1, tiny.vocab_size)
    assert torch.allclose(last[0, 0], full[0, -1], atol=1e-5)


def test_move_slot_keeps_a_row_decoding_identically(loaded):
    tiny, ours = loaded("qwen2")
    ids = _ids(10, tiny.vocab_size, seed=4)
    want = _reference(tiny, ids)[0, -1]
    model = ours.model
    model.setup_cache(max_batch=3, max_seq=32)
    try:
        with torch.no_grad():
            model(ids[:, :9], torch.arange(9)[None], slot=2)
            model.move_slot(2, 0, length=9)
            got = model(ids[:, 9:], torch.tensor([[9]]), slot=0)[0, 0]
    finally:
        model.drop_cache()
    assert (got - want).abs().max().item() <= TOL


def test_llama3_rope_scaling_changes_the_logits(tiny_models, tmp_path, trained_tokenizer):
    """Guards the scaled-RoPE comparison above: the same weights without the scaling must disagree."""
    import json

    tiny = tiny_models("llama")
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in tiny.path.iterdir():
        (plain / f.name).symlink_to(f)
    cfg = json.loads((tiny.path / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_parameters"]["rope_theta"]}
    (plain / "config.json").unlink()
    (plain / "config.json").write_text(json.dumps(cfg))
    ids = _ids(40, tiny.vocab_size, seed=1)
    with torch.no_grad():
        unscaled = load_model(plain).model(ids)
    assert (unscaled - _reference(tiny, ids)).abs().max().item() > 10 * TOL


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
        },
        {"rope_type": "dynamic", "factor": 4.0},
    ],
    ids=["linear", "yarn", "yarn-betas", "dynamic"],
)
def test_rope_scaling_kinds_match_transformers_across_the_context(tmp_path, trained_tokenizer, rope):
    from .conftest import build_hf_model

    tiny = build_hf_model(tmp_path, "qwen2_untied", trained_tokenizer, rope_parameters={"rope_theta": 1e4, **rope})
    ours = load_model(tiny.path)
    ids = _ids(200, tiny.vocab_size, seed=9)  # well past the 64-token "original" context of the yarn cases
    with torch.no_grad():
        assert (ours.model(ids) - _reference(tiny, ids)).abs().max().item() <= TOL


class _ScalarReads(TorchDispatchMode):
    """Counts values read back from tensors (``int(t)``, ``t.item()``: on an accelerator, a device→host sync)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default):
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rows", [1, 3])
def test_decode_given_its_length_reads_nothing_back_and_gives_the_same_logits(loaded, rows):
    tiny, ours = loaded("qwen2")
    model = ours.model
    ids = _ids(12, tiny.vocab_size, seed=5).expand(rows, 12)
    model.setup_cache(max_batch=rows, max_seq=32)
    try:
        with torch.inference_mode():
            model(ids[:, :10], torch.arange(10).expand(rows, 10), length=10)
            pos = torch.full((rows, 1), 10)
            with _ScalarReads() as known:
                given = model(ids[:, 10:11], pos, length=11)
            with _ScalarReads() as unknown:
                read = model(ids[:, 10:11], pos)
    finally:
        model.drop_cache()
    assert known.reads == 0
    assert unknown.reads == 1  # the one read a caller saves by passing length
    assert torch.equal(given, read)
    assert (given[0, 0] - _reference(tiny, ids[:1, :11])[0, -1]).abs().max().item() <= TOL


def test_a_length_past_the_cache_or_below_one_is_refused(loaded):
    _, ours = loaded("qwen2")
    model = ours.model
    model.setup_cache(max_batch=1, max_seq=16)
    try:
        with torch.inference_mode(), pytest.raises(ValueError, match="position 16 exceeds the cache length 16"):
            model(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[3]]), length=17)
        with torch.inference_mode(), pytest.raises(ValueError, match="length must be at least 1, not 0"):
            model(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[3]]), length=0)
    finally:
        model.drop_cache()
