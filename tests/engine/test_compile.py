"""The compiled decode step: the same tokens as eager, alone and batched; eager when it cannot compile."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

import engine.compile as compile_mod
from engine.attention import grouped_decode
from engine.compile import CompileFailed, StepFn, compile_decode
from engine.generate import Usage, generate
from engine.quant import quantize_model
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from tests.engine.speed_helpers import byte_tokenizer, tiny_model

pytestmark = pytest.mark.slow

PROMPTS = ["hello world", "The quick brown fox jumps", "日本語", "END of the line; the end."]
TIMEOUT = 120.0


def _int4_model(max_batch: int):
    # PyTorch's kernels here; tests/engine/test_kernels.py compiles a model on enigma's.
    model = quantize_model(tiny_model(seed=3, max_batch=max_batch, max_seq=128), "int4", group_size=32, kernel="torch")
    model.setup_cache(max_batch, 128)
    return model


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer().with_stop_ids(set())


@dataclass
class Compiled:
    model: torch.nn.Module
    step: StepFn
    calls: int = 0

    def __call__(self, *args):
        self.calls += 1
        return self.step(*args)


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    """One int4 tiny model compiled for one row and for batches (compiling is the slow part: tests share it)."""
    model = _int4_model(max_batch=4)
    step, report = compile_decode(model, "on", batch_sizes=(1, 2))
    assert report["compiled"] is True
    assert report["batch_sizes"] == [1, 2]
    assert step is not None
    return Compiled(model, step)


def _greedy(model, tok, prompt: str, n: int = 24, step=None) -> tuple[list[int], str]:
    params = SamplingParams(temperature=0.0, max_tokens=n)
    events = list(generate(model, tok, tok.encode(prompt), params, step=step))
    assert isinstance(events[-1], Usage)
    text = "".join(e for e in events if isinstance(e, str))
    return tok.encode(text), text


def test_compiled_decode_logits_match_eager(compiled) -> None:
    prompt = torch.tensor([byte_tokenizer().encode("hello there, the quick brown fox")])
    n = prompt.shape[1]
    model = compiled.model
    with torch.inference_mode():
        model(prompt, torch.arange(n)[None], slot=0)
        pos = torch.tensor([[n]])
        got = compiled(torch.tensor([[7]]), pos, 0, n + 1, True)
        want = model(torch.tensor([[7]]), pos, slot=0, last_only=True)
    assert got.shape == want.shape == (1, 1, model.config.vocab_size)
    # Inductor fuses the bf16 casts around the int4 kernels differently: close, not bit-equal.
    assert (got - want).abs().max().item() < 2e-2
    assert got.argmax().item() == want.argmax().item()


def test_compiled_greedy_text_equals_eager(compiled, tok) -> None:
    eager = _int4_model(max_batch=1)
    before = compiled.calls
    for prompt in PROMPTS:
        assert _greedy(compiled.model, tok, prompt, step=compiled)[1] == _greedy(eager, tok, prompt)[1]
    assert compiled.calls - before >= len(PROMPTS) * 20  # the decode steps ran through the compiled step


def test_compiled_batched_scheduler_equals_eager_single(compiled, tok) -> None:
    eager = _int4_model(max_batch=1)
    params = SamplingParams(temperature=0.0, max_tokens=20)
    with Scheduler(compiled.model, tok, max_batch=4, max_seq=128) as sched:
        sched.set_decode_step(compiled)
        handles = [sched.submit(tok.encode(p), params) for p in PROMPTS]
        results = [h.collect(TIMEOUT)[0] for h in handles]
        assert sched.stats()["avg_batch"] > 1.5  # the batched graph really ran
    assert results == [_greedy(eager, tok, p, 20)[1] for p in PROMPTS]


def test_off_leaves_the_model_eager() -> None:
    model = tiny_model(max_batch=1)
    assert compile_decode(model, "off") == (None, {"compiled": False, "reason": "off"})


def test_unknown_mode_and_missing_cache_are_refused() -> None:
    model = tiny_model(max_batch=1)
    with pytest.raises(ValueError, match="compile must be one of auto, on, off, got 'fast'"):
        compile_decode(model, "fast")
    model.drop_cache()
    with pytest.raises(ValueError, match=r"needs the model's KV cache \(setup_cache\) first"):
        compile_decode(model, "on")


@pytest.fixture
def no_compiler(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)


@pytest.mark.usefixtures("no_compiler")
def test_without_a_cxx_compiler_auto_stays_eager_and_on_fails(tok) -> None:
    model = tiny_model(max_batch=1)
    step, report = compile_decode(model, "auto")
    assert report == {"compiled": False, "reason": "no C++ compiler (g++, c++ or clang++) on PATH"}
    assert step is None
    assert _greedy(model, tok, "hello", 4)[1]  # still generates, eagerly
    with pytest.raises(CompileFailed, match=r"cannot compile the decode step: no C\+\+ compiler"):
        compile_decode(model, "on")


def test_a_failing_compiler_falls_back_to_eager_in_auto(monkeypatch, tok) -> None:
    def broken(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("inductor exploded\nsecond line")

        return call

    monkeypatch.setattr(compile_mod.torch, "compile", broken)
    model = tiny_model(max_batch=2)
    step, report = compile_decode(model, "auto")
    assert report == {"compiled": False, "reason": "RuntimeError: inductor exploded"}
    assert step is None
    with pytest.raises(CompileFailed, match="cannot compile the decode step: RuntimeError: inductor exploded"):
        compile_decode(model, "on")


def test_a_compiled_step_that_disagrees_with_eager_is_rejected(monkeypatch) -> None:
    def wrong(fn, **kwargs):
        return lambda *args, **kw: -fn(*args, **kw)  # unrelated logits, as a miscompiled step gives

    monkeypatch.setattr(compile_mod.torch, "compile", wrong)
    step, report = compile_decode(tiny_model(max_batch=2), "auto")
    assert step is None
    assert report == {"compiled": False, "reason": "CompileFailed: the compiled step disagrees with eager at batch 1"}


def test_cache_dir_is_where_inductor_writes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored-after-the-test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    target = tmp_path / "inductor"

    def fake(fn, **kwargs):
        return fn

    monkeypatch.setattr(compile_mod.torch, "compile", fake)
    assert compile_decode(tiny_model(max_batch=1), "on", cache_dir=target)[1]["compiled"] is True
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(target)
    assert target.is_dir()


@pytest.mark.parametrize("rows", [1, 3])
def test_grouped_decode_equals_sdpa(rows: int) -> None:
    torch.manual_seed(rows)
    q, cache = torch.randn(rows, 6, 1, 16), torch.randn(2, rows, 2, 40, 16)
    k, v = cache[0, :, :, :25], cache[1, :, :, :25]  # views of a longer cache, as the model passes them
    mask = None
    if rows > 1:  # rows of different lengths: keys past a row's position are masked out
        lengths = torch.tensor([25, 10, 17])
        mask = torch.zeros(rows, 1, 1, 25).masked_fill_(torch.arange(25) >= lengths[:, None, None, None], -torch.inf)
    got = grouped_decode(q, k, v, mask).reshape(rows, 6, 1, 16)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert (got - want).abs().max().item() < 1e-5
