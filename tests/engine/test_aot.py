"""The persistent compiled step (AOTInductor): built once in a child process, loaded by later processes without
tracing, swapped into a serving scheduler between steps; stale or corrupt artifacts are refused with a reason.

One tiny model is built once for the module (two graphs: about a minute and a half on two busy cores); every
test after that loads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.compile import (
    AotStep,
    AotUnavailable,
    BackgroundCompile,
    ModelRecipe,
    load_artifact,
    step_key,
)
from engine.generate import Usage
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BATCHES = (1, 2)
BUILD_TIMEOUT = 900.0
PROMPTS = ["The quick brown fox", "Numbers 12345 and", "def add(a, b):", "hello"]


@pytest.fixture(scope="module")
def recipe(tiny_ggufs) -> ModelRecipe:
    # max_batch 4: the batch graph covers 2..4 rows. The kernels are this machine's choice (enigma's where the CPU
    # has them: their custom ops must survive the package too).
    return ModelRecipe(str(tiny_ggufs("llama")), "float32", max_seq=128, max_batch=4, kernels="auto")


@pytest.fixture(scope="module")
def artifact(recipe: ModelRecipe, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """Build the step as the daemon does (BackgroundCompile: a child process) while the model serves eagerly;
    once for the module. The same request before and after the swap gives the same greedy tokens."""
    directory = tmp_path_factory.mktemp("aot") / "step"
    model, tok = _model(recipe)
    tok.stop_ids = set()
    params = SamplingParams(temperature=0.0, max_tokens=24)
    installed = threading.Event()
    with Scheduler(model, tok, max_batch=4, max_seq=128) as sched:

        def install(step: AotStep) -> None:
            sched.set_decode_step(CountingStep(step), applied=installed.set)

        job = BackgroundCompile(model, recipe, directory, install, batch_sizes=BATCHES).start()
        eager = [sched.submit(tok.encode(p), params).collect(60)[0] for p in PROMPTS]
        assert job.state == "compiling"  # those were served while the step was being built
        assert sched.decode_step is None
        assert job.done.wait(BUILD_TIMEOUT), "the build did not finish"
        assert job.state is True, job.reason
        assert installed.wait(60)
        compiled = [sched.submit(tok.encode(p), params).collect(60)[0] for p in PROMPTS]
        step = sched.decode_step
    assert isinstance(step, CountingStep)
    assert step.calls > 20
    assert compiled == eager
    assert job.report["source"] == "built"
    assert job.report["rebuilt_because"].startswith("no compiled step stored in")
    return directory, job.report


def _model(recipe: ModelRecipe):
    loaded, _ = recipe.build()
    return loaded.model, loaded.tokenizer


def _greedy(model, tok, prompts: list[str], n: int, swap: AotStep | None = None) -> list[list[int]]:
    """Greedy completions from a scheduler; with ``swap``, the step is handed over while the streams run."""
    params = SamplingParams(temperature=0.0, max_tokens=n)
    tok.stop_ids = set()  # run every stream to n tokens: the swap must land inside them
    applied = threading.Event()
    at: list[int] = []
    with Scheduler(model, tok, max_batch=4, max_seq=128) as sched:
        handles = [sched.submit(tok.encode(p), params) for p in prompts]
        if swap is not None:
            first = handles[0]
            for _ in zip(range(3), iter(first), strict=False):  # a few tokens in: the streams are running eagerly
                pass

            def mark() -> None:
                at.append(len(first.state.completion))
                applied.set()

            sched.set_decode_step(swap, applied=mark)
        for h in handles:
            h.done.wait(120)
    if swap is not None:
        assert applied.is_set()
        assert at[0] < n, "the swap came after the stream ended"
    out = []
    for h in handles:
        assert isinstance(h.usage, Usage), h.error
        out.append(list(h.state.completion))
    return out


class CountingStep:
    """An AotStep that counts its calls (the compiled graphs really ran)."""

    def __init__(self, step: AotStep) -> None:
        self.step, self.calls = step, 0

    def __call__(self, *args: Any) -> torch.Tensor:
        self.calls += 1
        return self.step(*args)


def test_a_swap_mid_stream_keeps_greedy_tokens(recipe: ModelRecipe, artifact) -> None:
    directory, _ = artifact
    eager_model, tok = _model(recipe)
    want = _greedy(eager_model, tok, PROMPTS, 40)
    model, tok = _model(recipe)
    step = CountingStep(load_artifact(model, directory, step_key(model, recipe, BATCHES)))
    got = _greedy(model, tok, PROMPTS, 40, swap=step)  # type: ignore[arg-type]
    assert step.calls > 10
    assert got == want


def test_compiled_logits_match_eager_for_one_row_and_a_batch(recipe: ModelRecipe, artifact) -> None:
    directory, _ = artifact
    model, tok = _model(recipe)
    step = load_artifact(model, directory, step_key(model, recipe, BATCHES))
    ids = tok.encode("The quick brown fox jumps over the lazy dog")
    n = len(ids)
    with torch.inference_mode():
        for rows in (1, 3):
            model(torch.tensor([ids] * rows), torch.arange(n).expand(rows, n), slot=0)
            tokens, pos = torch.full((rows, 1), ids[1]), torch.full((rows, 1), n)
            got = step(tokens, pos, 0, n + 1, True)
            want = model.forward_positions(tokens, pos, 0, n + 1, True)
            cos = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=-1)
            assert bool((cos > 0.999).all()), cos
            assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_the_last_position_of_the_cache_runs_eager(recipe: ModelRecipe, artifact) -> None:
    directory, _ = artifact
    model, _ = _model(recipe)
    step = load_artifact(model, directory, step_key(model, recipe, BATCHES))
    with torch.inference_mode():
        tokens, pos = torch.tensor([[5]]), torch.tensor([[127]])
        got = step(tokens, pos, 0, 128, True)  # the graphs take up to 127 keys: this one is eager, not an error
        assert torch.equal(got, model.forward_positions(tokens, pos, 0, 128, True))


def test_a_second_process_loads_the_step_without_tracing(recipe: ModelRecipe, artifact) -> None:
    directory, _ = artifact
    script = f"""
import json, sys, torch
from pathlib import Path
from engine.compile import BackgroundCompile, ModelRecipe
recipe = ModelRecipe(**json.loads({json.dumps(json.dumps(recipe.__dict__))}))
loaded, _ = recipe.build()
got = []
job = BackgroundCompile(loaded.model, recipe, Path({str(directory)!r}), got.append, batch_sizes={BATCHES!r}).start()
job.done.wait(120)
with torch.inference_mode():
    logits = got[0](torch.tensor([[3]]), torch.tensor([[1]]), 0, 2, True)
tracers = ("torch.export._trace", "torch._inductor.compile_fx", "torch._inductor.codecache")
traced = [m for m in tracers if m in sys.modules]
print(json.dumps({{"state": job.state, "report": job.report, "shape": list(logits.shape), "traced": traced}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["state"] is True
    assert result["report"]["source"] == "artifact"
    assert "build_s" not in result["report"]
    assert result["traced"] == []  # neither export's tracer nor Inductor's compiler was even imported
    assert result["shape"][:2] == [1, 1]


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_corrupt_package_is_refused_with_the_reason(recipe: ModelRecipe, artifact, tmp_path: Path) -> None:
    directory = _copy(artifact[0], tmp_path / "step")
    package = directory / "step-b1.pt2"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    package.write_bytes(bytes(data))
    model, _ = _model(recipe)
    with pytest.raises(AotUnavailable, match=r"step-b1\.pt2 does not match its recorded hash"):
        load_artifact(model, directory, step_key(model, recipe, BATCHES))


def test_an_artifact_for_another_torch_or_cpu_is_stale(recipe: ModelRecipe, artifact, tmp_path: Path) -> None:
    directory = _copy(artifact[0], tmp_path / "step")
    meta = json.loads((directory / "step.json").read_text())
    meta["key"]["torch"] = "1.0.0"
    meta["key"]["cpu"]["flags"] = ["avx512f"]
    (directory / "step.json").write_text(json.dumps(meta))
    model, _ = _model(recipe)
    with pytest.raises(AotUnavailable, match="the stored step was built for another cpu, torch"):
        load_artifact(model, directory, step_key(model, recipe, BATCHES))


def test_an_artifact_for_another_model_layout_is_stale(recipe: ModelRecipe, artifact) -> None:
    other = ModelRecipe(recipe.path, recipe.dtype, recipe.max_seq, max_batch=2, kernels=recipe.kernels)
    model, _ = _model(other)
    with pytest.raises(AotUnavailable, match="built for another batch_sizes, layout, recipe"):
        load_artifact(model, artifact[0], step_key(model, other, BATCHES))


def test_where_kernels_are_built_is_no_part_of_the_key(recipe: ModelRecipe) -> None:
    model, _ = _model(recipe)
    key = step_key(model, recipe, BATCHES)
    assert step_key(model, dataclasses.replace(recipe, kernel_root="/elsewhere"), BATCHES) == key
    assert step_key(model, dataclasses.replace(recipe, max_batch=2), BATCHES) != key


def test_a_refused_artifact_is_reported_and_the_model_stays_eager(
    recipe: ModelRecipe, artifact, tmp_path: Path, monkeypatch
) -> None:
    directory = _copy(artifact[0], tmp_path / "step")
    (directory / "step.json").write_text("{not json")
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler either: nothing can be rebuilt
    monkeypatch.delenv("CXX", raising=False)
    model, _ = _model(recipe)
    installed: list[AotStep] = []
    job = BackgroundCompile(model, recipe, directory, installed.append, batch_sizes=BATCHES).start()
    assert job.wait(60) is False
    assert job.reason == "no C++ compiler (g++, c++ or clang++) on PATH"
    assert job.report["rebuilt_because"].startswith(f"{directory / 'step.json'} is unreadable: JSONDecodeError")
    assert installed == []


async def test_the_backend_serves_eagerly_then_swaps_in_the_stored_step(
    recipe: ModelRecipe, artifact, tmp_path: Path, monkeypatch
) -> None:
    from daemon.modules.llm.native import NativeBackend, _artifact_name, step_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    _copy(artifact[0], step_cache_dir() / _artifact_name(Path(recipe.path)))
    options = {"compile": "auto", "max_batch": recipe.max_batch, "context_length": recipe.max_seq}
    backend = NativeBackend(recipe.path, options, tmp_path / "data")
    await backend.load()
    try:
        assert backend.info()["compiled"] in ("pending", True)
        assert await asyncio.to_thread(backend.step_ready.wait, 60)
        info = backend.info()
        assert (info["compiled"], info["compile_source"]) == (True, "artifact")
        assert "compile_reason" not in info
        gen = backend.generate("hello", {"temperature": 0.0, "max_tokens": 8})
        await gen.drain()
        assert gen.usage is not None
        assert gen.usage.completion_tokens > 0
    finally:
        await backend.unload()


async def test_the_backend_reports_why_it_stays_eager(recipe: ModelRecipe, tmp_path: Path, monkeypatch) -> None:
    from daemon.modules.llm.native import NativeBackend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    options = {"compile": "auto", "max_batch": recipe.max_batch, "context_length": recipe.max_seq}
    backend = NativeBackend(recipe.path, options, tmp_path / "data")
    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler: nothing stored, nothing can be built
    monkeypatch.delenv("CXX", raising=False)
    await backend.load()
    try:
        job = backend._compile
        assert job is not None
        assert await asyncio.to_thread(job.wait, 60) is False
        info = backend.info()
        assert (info["compiled"], info["compile_reason"]) == (False, "no C++ compiler (g++, c++ or clang++) on PATH")
        assert info["compile_rebuilt_because"].startswith("no compiled step stored in")
        gen = backend.generate("hello", {"temperature": 0.0, "max_tokens": 8})
        await gen.drain()  # eagerly
        assert gen.usage is not None
        assert gen.usage.completion_tokens > 0
    finally:
        await backend.unload()
