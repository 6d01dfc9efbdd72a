"""Sampling: each filter and penalty alone, the batched sampler's per-row settings, and seeds. What a request may
carry is checked by ``bus.sampling`` (``tests/bus/test_sampling_options.py``)."""

from __future__ import annotations

import pytest
import torch

from engine.sampling import (
    BatchSettings,
    SamplingParams,
    apply_penalties,
    apply_temperature,
    filter_logits,
    sample,
    sample_batch,
)

V = 1000


@pytest.fixture
def logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, V, generator=g) * 3


def kept(row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(row)).flatten().tolist())


def test_top_k_keeps_exactly_k_best(logits: torch.Tensor) -> None:
    out = filter_logits(logits, top_k=7)
    for r in range(4):
        assert kept(out[r]) == set(logits[r].topk(7).indices.tolist())
        assert torch.equal(out[r][out[r].isfinite()], logits[r][out[r].isfinite()])


def test_top_k_per_row_settings(logits: torch.Tensor) -> None:
    out = filter_logits(logits, top_k=torch.tensor([1, 5, 0, 50]))
    assert [len(kept(out[r])) for r in range(4)] == [1, 5, V, 50]


def test_top_p_keeps_smallest_set_reaching_mass(logits: torch.Tensor) -> None:
    p = 0.8
    out = filter_logits(logits, top_p=p)
    for r in range(4):
        probs = logits[r].softmax(-1)
        keep = sorted(kept(out[r]), key=lambda i: -probs[i].item())
        mass = probs[keep].sum().item()
        assert mass >= p - 1e-6
        assert mass - probs[keep[-1]].item() < p  # without its weakest member the set falls short
        assert min(probs[keep]) >= max(probs[list(set(range(V)) - set(keep))])


def test_top_p_always_keeps_the_best_token() -> None:
    row = torch.tensor([[5.0, 0.0, 0.0]])
    assert kept(filter_logits(row, top_p=1e-9)[0]) == {0}


def test_min_p_drops_tokens_below_fraction_of_best(logits: torch.Tensor) -> None:
    out = filter_logits(logits, min_p=0.1)
    for r in range(4):
        probs = logits[r].softmax(-1)
        expect = set(torch.nonzero(probs >= 0.1 * probs.max()).flatten().tolist())
        assert kept(out[r]) == expect


def test_no_filters_keep_everything(logits: torch.Tensor) -> None:
    assert torch.equal(filter_logits(logits), logits)


def test_temperature_divides_and_leaves_greedy_rows() -> None:
    x = torch.tensor([[2.0, -4.0], [2.0, -4.0]])
    out = apply_temperature(x, torch.tensor([0.5, 0.0]))
    assert out.tolist() == [[4.0, -8.0], [2.0, -4.0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    x = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_penalties(x, torch.zeros(1, 4), seen, repetition=2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_presence_penalty_is_flat_once_a_token_appeared() -> None:
    x = torch.zeros(1, 3)
    counts = torch.tensor([[0.0, 1.0, 5.0]])
    out = apply_penalties(x, counts, counts > 0, presence=0.5)
    assert out.tolist() == [[0.0, -0.5, -0.5]]


def test_frequency_penalty_scales_with_occurrences() -> None:
    x = torch.zeros(1, 3)
    counts = torch.tensor([[0.0, 1.0, 5.0]])
    out = apply_penalties(x, counts, counts > 0, frequency=0.5)
    assert out.tolist() == [[0.0, -0.5, -2.5]]


def test_penalty_steers_greedy_choice_away_from_repeats() -> None:
    x = torch.tensor([3.0, 2.9, 0.0])
    counts = torch.tensor([2.0, 0.0, 0.0])
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5)
    assert sample(x, SamplingParams(temperature=0.0)) == 0
    assert sample(x, params, counts=counts, seen=counts > 0) == 1


def test_penalties_without_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="counts"):
        sample(torch.zeros(3), SamplingParams(presence_penalty=1.0))


def test_greedy_is_argmax(logits: torch.Tensor) -> None:
    settings = BatchSettings.of([SamplingParams(temperature=0.0)] * 4)
    assert torch.equal(sample_batch(logits, settings, [None] * 4), logits.argmax(-1))


def test_same_seed_same_tokens(logits: torch.Tensor) -> None:
    params = SamplingParams(temperature=1.0, seed=42)
    a = [sample(logits[0], params, g) for g in [params.make_generator()] for _ in range(20)]
    b = [sample(logits[0], params, g) for g in [params.make_generator()] for _ in range(20)]
    assert a == b
    assert len(set(a)) > 1  # it really samples


def test_row_seed_is_independent_of_batch_neighbours(logits: torch.Tensor) -> None:
    p = SamplingParams(temperature=1.0, seed=7)
    alone = sample_batch(logits[:1], BatchSettings.of([p]), [p.make_generator()])
    others = [SamplingParams(temperature=0.5, top_k=3, seed=s) for s in (1, 2, 3)]
    batch = sample_batch(logits, BatchSettings.of([p, *others]), [x.make_generator() for x in [p, *others]])
    assert batch[0] == alone[0]


def test_batch_mixes_greedy_and_sampled_rows(logits: torch.Tensor) -> None:
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=1, seed=3)]
    out = sample_batch(logits[:2], BatchSettings.of(params), [p.make_generator() for p in params])
    assert out.tolist() == logits[:2].argmax(-1).tolist()


def test_sampled_tokens_stay_inside_top_k(logits: torch.Tensor) -> None:
    p = SamplingParams(temperature=2.0, top_k=5, seed=0)
    g = p.make_generator()
    allowed = set(logits[1].topk(5).indices.tolist())
    assert {sample(logits[1], p, g) for _ in range(200)} <= allowed


def test_sampling_frequencies_follow_probabilities() -> None:
    x = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    p = SamplingParams(temperature=1.0, seed=0)
    g = p.make_generator()
    counts = torch.bincount(torch.tensor([sample(x, p, g) for _ in range(3000)]), minlength=3).float() / 3000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.04)
