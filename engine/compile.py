"""The compiled single-token decode step, in two forms over ``Transformer.forward_positions``.

Why: decoding one token of a small model is a few milliseconds of kernel work buried under thousands of tiny
eager ops — casts around the quantized kernels, RMSNorm's pieces, RoPE's roll and adds, views — each paying
Python and dispatcher overhead. Inductor fuses those element-wise chains into a handful of generated C++
loops and calls the matmul kernels directly; on SmolLM2-135M it takes a decode step from about 14 ms to 9
(``bench/engine.py``). Prefill is left eager: it is dominated by the matmuls already.

**The persistent step** (what the daemon serves with; lower half of this file): AOTInductor compiles the step
once into ``.pt2`` packages, keyed on the model, torch, the engine code and the CPU, which a later start opens in
about 0.05 s with no tracing at all. The weights and the KV cache are inputs of the compiled function, not
constants: the package holds no second copy of the model, and every step reads and writes the live cache that
eager prefill writes. ``BackgroundCompile`` builds a missing or stale package in a niced child process while the
model serves eagerly, and hands the step to the scheduler, which swaps it in between two steps.

**``compile_decode``** (benchmarks and tests that want a compiled model now, in this process): ``torch.compile``
warmed up before it returns. Its price is paid on every start — Dynamo traces the step again even when
Inductor's cache has the kernels (SmolLM2 for one row and for batches: 75–130 s on two cores with an empty cache,
50–59 s from the cache) — which is why the daemon no longer uses it.

- ``compile_decode`` warms the graphs up on the model's own KV cache (the scratch positions it writes are
  overwritten by the next prefill before anything reads them), for one row and for a batch, so no request ever
  waits for a compile. Nothing may be serving meanwhile.
- Inductor's on-disk cache lives where the caller says (the daemon's cache directory), which a restart reuses.
- Anything that goes wrong — no C++ compiler on a Pi, an Inductor bug — leaves the model in eager mode and
  says why in the report, unless compilation was demanded.

Either form is a ``StepFn`` that the scheduler (or ``engine.generate.generate``) calls for its one-token steps in
place of the model's forward; the model itself holds no step. Serving skips Dynamo's guard checks
(``skip_guard_eval_unsafe``: about 1 ms of a 8 ms step on SmolLM2). That is sound here because the step itself
checks what the warm-up specialised on before it runs a graph — cache row 0, at least two positions, and the
very cache it was compiled with (``setup_cache`` makes a new ``cache_info``) — and runs anything else eagerly;
it is called under inference mode, with int64 tokens and positions, one token per row; the only thing that
varies is the row count, and the guards that tell the one-row graph from the batch graph still run.

One compiled model per process: compiling one drops the compiled steps of any other (``torch.compiler.reset``),
so a daemon that switches models neither piles up graphs against Dynamo's recompile limit nor keeps an
unloaded model's graphs alive. Graphs are specialised on grad mode: every step runs under
``torch.inference_mode`` (as the scheduler does) so a caller's mode can never trigger a silent recompile.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from engine.errors import EngineError
from engine.model import Transformer

if TYPE_CHECKING:
    from engine.loader import LoadedModel

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# A single-token decode step: (tokens, input_pos, slot, length, last_only) → logits, as
# ``Transformer.forward_positions`` takes them. The scheduler calls it in place of the model's forward; a step
# runs calls it was not built for (another cache row, a cache set up since) eagerly.
StepFn = Callable[[Tensor, Tensor, int, int, bool], Tensor]


class CompileFailed(EngineError, RuntimeError):
    code = "internal"


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor would use, or None (it generates and builds C++ for CPU kernels)."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def compile_decode(
    model: Transformer, mode: str = "auto", *, batch_sizes: tuple[int, ...] = (1, 2), cache_dir: Path | None = None
) -> tuple[StepFn | None, dict[str, Any]]:
    """Compile ``model``'s single-token step and warm it up for ``batch_sizes`` rows: the step (None when it
    stays eager) and a report.

    The model's KV cache must be allocated (``setup_cache``): the warm-up writes scratch keys at position 1
    of the first rows. ``mode``: ``auto`` compiles when a C++ compiler is present and falls back to eager on
    any failure; ``on`` raises ``CompileFailed`` instead; ``off`` does nothing.
    """
    if mode not in MODES:
        raise ValueError(f"compile must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None, {"compiled": False, "reason": "off"}
    info = model.cache_info
    if info.max_batch == 0:
        raise ValueError("compile_decode needs the model's KV cache (setup_cache) first")
    if cxx_compiler() is None:
        return _give_up(mode, "no C++ compiler (g++, c++ or clang++) on PATH")
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir))

    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # compile in this process: no pool of compiler workers left behind
    torch.compiler.reset()
    compiled = torch.compile(model.forward_positions, dynamic=True)

    def warm(tokens: Tensor, input_pos: Tensor, slot: int, length: int, last_only: bool) -> Tensor:
        with torch.inference_mode():
            return compiled(tokens, input_pos, slot, length, last_only)

    def step(tokens: Tensor, input_pos: Tensor, slot: int, length: int, last_only: bool) -> Tensor:
        if model.cache_info is not info or slot != 0 or length < 2:  # what the warm-up did not specialise on
            return model.forward_positions(tokens, input_pos, slot, length, last_only)
        with torch.inference_mode(), torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return compiled(tokens.long().contiguous(), input_pos.long().contiguous(), slot, length, last_only)

    t0 = time.perf_counter()
    sizes = sorted({b for b in batch_sizes if 1 <= b <= info.max_batch})
    # The generated wrapper otherwise re-checks the size and stride of every kernel output on every step (about
    # 0.7 ms of a step on SmolLM2 at 8 rows): the warm-up below checks the results against eager once instead.
    unchecked = inductor_config.patch(size_asserts=False, scalar_asserts=False, alignment_asserts=False)
    try:
        with unchecked:
            _warm_up(sizes, warm, model)
    except Exception as exc:  # an Inductor failure is any exception type; eager still works
        return _give_up(mode, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    seconds = time.perf_counter() - t0
    log.info("compiled the decode step for batch sizes %s in %.1f s", sizes, seconds)
    return step, {"compiled": True, "compile_s": round(seconds, 1), "batch_sizes": sizes}


def _warm_up(sizes: list[int], warm: Callable[..., Tensor], model: Transformer) -> None:
    """Compile the graphs for ``sizes`` rows and check each against eager."""
    for b in sizes:
        with torch.inference_mode():  # inputs made as the scheduler makes them: guards check dispatch keys
            tokens = torch.zeros(b, 1, dtype=torch.long)
            pos = torch.ones(b, 1, dtype=torch.long)
        got = warm(tokens, pos, 0, 2, True)
        with torch.inference_mode():
            want = model.forward_positions(tokens, pos, 0, 2, True)
        # A broken compile gives unrelated logits; a sound one differs in the rounding of its fused bf16 casts
        # (max |Δ| 3.6 on logits of 33 seen at a scratch position, cosine 0.9989).
        agree = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=-1)
        if not torch.isfinite(got).all() or bool((agree < 0.99).any()):
            raise CompileFailed(f"the compiled step disagrees with eager at batch {b}")


def _give_up(mode: str, reason: str) -> tuple[None, dict[str, Any]]:
    if mode == "on":
        raise CompileFailed(f"cannot compile the decode step: {reason}")
    log.warning("decode step stays eager: %s", reason)
    return None, {"compiled": False, "reason": reason}


# ==============================================================================================================
# The persistent step: AOTInductor
#
# ``compile_decode`` pays Dynamo's tracing on every start (50–59 s here even with a warm Inductor cache, 128 s
# cold). AOTInductor compiles the step once into a shared library inside a ``.pt2`` package that a later start
# loads in about a second, with no tracing at all. What the package must not hold: the weights (a second copy
# of the model) and the KV cache (it must be the live cache, which eager prefill writes). So the exported
# function takes every parameter and buffer of the model as an input, the caches included, and writes the new
# keys/values into those inputs in place: the server passes its own tensors on every call.
# ==============================================================================================================

AOT_FORMAT = 1  # bump when the exported function changes shape: older artifacts then read as stale
# The engine files the step is traced from: an artifact built from other code is stale (the wrapper in this file
# is covered by AOT_FORMAT, so that an edit elsewhere here does not throw every stored step away).
_TRACED_SOURCES = ("model.py", "quant.py")
# The /proc/cpuinfo flags that change what Inductor and the kernels generate (the vector ISA it targets).
_CODEGEN_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "asimd",
    "asimddp",
    "sve",
)


class AotUnavailable(EngineError, RuntimeError):
    """The persistent step cannot be used (missing, stale, corrupt or failed to build); the message says why."""

    code = "internal"


@dataclass(frozen=True)
class ModelRecipe:
    """How the served model is made, so that another process (the step's builder) makes the same one.

    ``kernels`` is ``engine.quant.prepare_for_inference``'s mode, or ``none`` for the float model as loaded.
    ``kernel_root`` is where enigma's CPU kernels are built (``engine.kernels.build_dir``): the builder child
    must find the ones the server built rather than build them again. It does not change the model, so it is
    no part of a step's key.
    """

    path: str
    dtype: str = "float32"
    max_seq: int = 4096
    max_batch: int = 8
    kernels: str = "auto"
    kernel_root: str | None = None

    def build(self) -> tuple[LoadedModel, dict[str, Any] | None]:
        """Load, prepare and allocate the cache: the model as it serves, and the preparation's report."""
        from engine.loader import load_model

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.dtype)
        if dtype is None:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        from engine.gguf_loader import forget_gguf

        try:
            loaded = load_model(self.path, dtype=dtype, max_seq_len=self.max_seq)
            report = None
            if self.kernels != "none":
                from engine.quant import prepare_for_inference

                with torch.no_grad():
                    root = Path(self.kernel_root) if self.kernel_root else None
                    report = prepare_for_inference(loaded.model, self.kernels, loaded.source, kernel_root=root)
        finally:
            forget_gguf()
        loaded.model.setup_cache(self.max_batch, min(self.max_seq, loaded.config.max_seq_len))
        return loaded, report


def step_key(model: Transformer, recipe: ModelRecipe, batch_sizes: Sequence[int]) -> dict[str, Any]:
    """What an artifact is valid for: a change in any field makes it stale.

    The model file by name, size and mtime (a hash of 100 MB of weights would cost a second at every start); the
    prepared model's layout (every tensor's name, shape and dtype, and each module's description: config,
    quantization, kernel set, cache size); the engine code it was traced from; torch; the CPU's vector ISA.
    """
    return {
        "format": AOT_FORMAT,
        "model": _file_identity(Path(recipe.path)),
        "recipe": {k: v for k, v in asdict(recipe).items() if k != "kernel_root"}
        | {"path": str(Path(recipe.path).resolve())},
        "layout": _layout_hash(model),
        "code": _code_hash(),
        "torch": torch.__version__,
        "cpu": _cpu_identity(),
        "batch_sizes": _graph_sizes(batch_sizes, model.cache_info.max_batch),
    }


def _file_identity(path: Path) -> list[list[Any]]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size, st.st_mtime_ns])
    return out


def _layout_hash(model: Transformer) -> str:
    h = hashlib.sha256(repr(model).encode())
    h.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in _state(model):
        h.update(f"{name}:{tuple(t.shape)}:{t.stride()}:{t.dtype}\n".encode())
    attends = {repr(block.attention.attend) for block in model.blocks}
    h.update(repr((model.kernels, sorted(attends))).encode())
    return h.hexdigest()[:32]


def _code_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _TRACED_SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:32]


def _cpu_identity() -> dict[str, Any]:
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    from engine import kernels

    active = getattr(kernels, "active", None)
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "flags": sorted(flags.intersection(_CODEGEN_FLAGS)),
        "kernels": active() if callable(active) else None,
    }


def _graph_sizes(batch_sizes: Sequence[int], max_batch: int) -> list[int]:
    """The graphs to build: one for a single row (its mask-free attention is a different graph) and, when the
    cache has several rows, one for any number of rows from 2 up to all of them."""
    return [1] + ([max_batch] if max_batch > 1 and any(b > 1 for b in batch_sizes) else [])


def _state(model: Transformer) -> list[tuple[str, Tensor]]:
    """Every tensor the step reads, in the order the exported function takes them (tied weights once)."""
    return [*model.named_parameters(), *model.named_buffers()]


class _Positions(nn.Module):
    """``forward_positions`` of a one-token step at cache row 0; the key count travels as ``span``'s length
    (AOTInductor passes only tensors, so a size is how an integer crosses into the graph)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, input_pos: Tensor, span: Tensor) -> Tensor:
        return self.model.forward_positions(tokens, input_pos, 0, span.shape[0], True)


class _StateAsInputs(nn.Module):
    """The step with the model's tensors as inputs. It registers no tensors of its own, so export lifts no
    weights into the package and every cache write lands in the tensor the caller passed."""

    target: _Positions

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.__dict__["target"] = _Positions(model)  # unregistered: its tensors are not this module's state
        self.names = ["model." + name for name, _ in _state(model)]

    def forward(self, tokens: Tensor, input_pos: Tensor, span: Tensor, state: list[Tensor]) -> Tensor:
        return torch.func.functional_call(
            self.target, dict(zip(self.names, state, strict=True)), (tokens, input_pos, span)
        )


def build_artifact(model: Transformer, key: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Export and compile ``model``'s step for the graphs the key names, check them against eager on this
    model's own cache, and write them under ``out_dir`` atomically (each file to a temporary name, then renamed;
    ``step.json`` last, listing the packages' hashes). Returns a report."""
    if cxx_compiler() is None:
        raise AotUnavailable("no C++ compiler (g++, c++ or clang++) on PATH")
    info = model.cache_info
    if info.max_seq < 4:
        raise AotUnavailable(f"a cache of {info.max_seq} positions is too short to compile a step for")
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapper = _StateAsInputs(model).eval()
    state = [t for _, t in _state(model)]
    length = torch.export.Dim("length", min=2, max=info.max_seq - 1)
    configs = {"size_asserts": False, "scalar_asserts": False, "alignment_asserts": False}
    files: dict[str, str] = {}
    timings: dict[str, float] = {}
    for rows in key["batch_sizes"]:
        t0 = time.perf_counter()
        b = 1 if rows == 1 else 2
        tokens, pos, span = torch.zeros(b, 1, dtype=torch.long), torch.full((b, 1), 2, dtype=torch.long), torch.empty(3)
        # Two rows and up trace the masked attention of a batch; one row the mask-free one (model.py).
        dim = {0: torch.export.Dim("rows", min=2, max=rows)} if rows > 2 else None
        shapes = {"tokens": dim, "input_pos": dim, "span": {0: length}, "state": [None] * len(state)}
        with torch.no_grad():
            ep = torch.export.export(wrapper, (tokens, pos, span, state), dynamic_shapes=shapes, strict=False)
        name = f"step-b{rows}.pt2"
        tmp = out_dir / f".{name}.{os.getpid()}.tmp.pt2"
        try:
            torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp), inductor_configs=dict(configs))
            tmp.replace(out_dir / name)
        finally:
            tmp.unlink(missing_ok=True)
        files[name] = _sha256(out_dir / name)
        timings[name] = round(time.perf_counter() - t0, 1)
    step = AotStep.load(model, out_dir, files)
    _check_against_eager(model, step, key["batch_sizes"])
    meta = {"key": key, "files": files, "build_s": timings}
    _write_atomic(out_dir / "step.json", json.dumps(meta, indent=1, sort_keys=True))
    return meta


def _check_against_eager(model: Transformer, step: AotStep, rows: list[int]) -> None:
    """Run each graph once at scratch positions of this (builder's) cache and compare with eager."""
    for b in sorted({1, min(2, *rows)} if len(rows) > 1 else {1}):
        with torch.inference_mode():
            # Positions 0 and 1 first, eagerly: the builder's cache is uninitialised memory (_builder_main).
            model.forward_positions(torch.ones(b, 2, dtype=torch.long), torch.arange(2).expand(b, 2), 0, 2, True)
            tokens = torch.arange(3, 3 + b).reshape(b, 1)
            pos = torch.full((b, 1), 2, dtype=torch.long)
            want = model.forward_positions(tokens, pos, 0, 3, True)
            got = step(tokens, pos, 0, 3, True)
        agree = torch.nn.functional.cosine_similarity(got.flatten(1), want.flatten(1), dim=-1)
        if not torch.isfinite(got).all() or bool((agree < 0.99).any()):
            raise CompileFailed(f"the AOT-compiled step disagrees with eager at batch {b}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class AotStep:
    """A decode step (``StepFn``) made of AOTInductor packages: one graph for one row, one for 2..max_batch rows.
    Each call passes the model's own tensors (weights and the live KV cache) by reference."""

    def __init__(self, model: Transformer, runners: dict[int, Any]) -> None:
        self.model = model
        self.runners = runners
        self.state = [t for _, t in _state(model)]  # the tensors themselves: the step must see this very cache
        self.cache_info = model.cache_info  # a new cache (setup_cache) is a new object: then the step runs eager
        self.max_seq = model.cache_info.max_seq
        self._spans = torch.empty(self.max_seq)  # a view of it carries the key count: no allocation per step

    @classmethod
    def load(cls, model: Transformer, directory: Path, files: dict[str, str]) -> AotStep:
        """Open the packages named in ``files`` (name → sha256): a hash that differs means a corrupt file."""
        runners: dict[int, Any] = {}
        for name, digest in files.items():
            path = directory / name
            if not path.is_file():
                raise AotUnavailable(f"{name} is missing")
            if _sha256(path) != digest:
                raise AotUnavailable(f"{name} does not match its recorded hash (corrupt or half-written)")
            rows = int(name.removeprefix("step-b").removesuffix(".pt2"))
            # The loader itself, not torch._inductor.aoti_load_package: importing torch._inductor costs 3 s here,
            # and its wrapper re-reads the call spec on every call.
            runners[rows] = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        if 1 not in runners:
            raise AotUnavailable("the artifact has no one-row graph")
        return cls(model, runners)

    def __call__(self, tokens: Tensor, input_pos: Tensor, slot: int, length: int, last_only: bool) -> Tensor:
        b = tokens.shape[0]
        runner = self.runners.get(1) if b == 1 else next((r for n, r in self.runners.items() if n >= b > 1), None)
        outside = slot != 0 or not 2 <= length < self.max_seq or self.model.cache_info is not self.cache_info
        if runner is None or outside:  # not what the graphs were built for
            return self.model.forward_positions(tokens, input_pos, slot, length, last_only)
        span = self._spans[:length]
        return runner.boxed_run([tokens.long().contiguous(), input_pos.long().contiguous(), span, *self.state])[0]


def load_artifact(model: Transformer, directory: Path, key: dict[str, Any]) -> AotStep:
    """The step stored under ``directory`` if it was built for ``key``; ``AotUnavailable`` says why not."""
    meta_path = directory / "step.json"
    if not meta_path.is_file():
        raise AotUnavailable(f"no compiled step stored in {directory}")
    try:
        meta = json.loads(meta_path.read_text())
        stored, files = meta["key"], meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AotUnavailable(f"{meta_path} is unreadable: {type(exc).__name__}: {exc}") from exc
    changed = sorted(k for k in key.keys() | stored.keys() if key.get(k) != stored.get(k))
    if changed:
        raise AotUnavailable(f"the stored step was built for another {', '.join(changed)}")
    try:
        return AotStep.load(model, directory, files)
    except AotUnavailable:
        raise
    except Exception as exc:  # a package the runtime rejects: any exception type
        raise AotUnavailable(f"the stored step does not load: {type(exc).__name__}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class BackgroundCompile:
    """Gives a serving model its compiled step without stopping it: the stored step when one was built for this
    model, torch and CPU (about a second), else a build in a child process, niced, then that.

    Why a child process: tracing and Inductor's code generation are minutes of Python that would hold the GIL
    against the scheduler's eager steps, and their OpenMP work would be a second thread team in the serving
    process (``Scheduler.run``); a crash in the compiler takes only the child down. Its price is a second copy
    of the model in memory while it builds. The step reaches the model through ``install`` (the scheduler's
    hand-off, applied between two steps); nothing here touches the live cache.

    ``state``: ``pending`` → (``compiling`` →) True, or False with ``reason``. ``report`` holds the details.
    """

    def __init__(
        self,
        model: Transformer,
        recipe: ModelRecipe,
        directory: Path,
        install: Callable[[AotStep], None],
        *,
        batch_sizes: Sequence[int] = (1, 2),
        inductor_cache: Path | None = None,
        niceness: int = 10,
    ) -> None:
        self.model = model
        self.recipe = recipe
        self.directory = directory
        self.install = install
        self.batch_sizes = tuple(batch_sizes)
        self.inductor_cache = inductor_cache
        self.niceness = niceness
        self.state: str | bool = "pending"
        self.reason = ""
        self.report: dict[str, Any] = {}
        self.done = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = False
        self._thread: threading.Thread | None = None

    def start(self) -> BackgroundCompile:
        self._thread = threading.Thread(target=self._main, name="engine-compile", daemon=True)
        self._thread.start()
        return self

    def cancel(self, timeout: float = 10.0) -> None:
        """Stop a build in progress (the model is being unloaded): kill our child and wait for the thread."""
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the step is installed or given up; whether it was installed."""
        self.done.wait(timeout)
        return self.state is True

    def _main(self) -> None:
        try:
            self._settle(self._run())
        except Exception as exc:  # never take the daemon down over a compile: it keeps serving eagerly
            log.exception("background compile failed")
            self._settle(f"{type(exc).__name__}: {_first_line(exc)}")

    def _run(self) -> str | None:
        """The step installed (None), or why not."""
        key = step_key(self.model, self.recipe, self.batch_sizes)
        t0 = time.perf_counter()
        try:
            step = load_artifact(self.model, self.directory, key)
        except AotUnavailable as exc:
            self.report["rebuilt_because"] = str(exc)
            log.info("building the decode step in the background: %s", exc)
        else:
            self.report.update(source="artifact", load_s=round(time.perf_counter() - t0, 2))
            self.install(step)
            return None
        if cxx_compiler() is None:  # a stored step needs none; building one does
            return "no C++ compiler (g++, c++ or clang++) on PATH"
        self.state = "compiling"
        why = self._build()
        if why is not None:
            return why
        t0 = time.perf_counter()
        try:
            step = load_artifact(self.model, self.directory, key)
        except AotUnavailable as exc:
            return f"the step just built does not serve this model: {exc}"
        self.report.update(source="built", load_s=round(time.perf_counter() - t0, 2))
        self.install(step)
        return None

    def _build(self) -> str | None:
        """Run the builder child; None when it wrote the artifact, else why not."""
        cmd = [
            sys.executable,
            "-m",
            "engine.compile",
            "--recipe",
            json.dumps(asdict(self.recipe)),
            "--out",
            str(self.directory),
            "--batch-sizes",
            ",".join(map(str, self.batch_sizes)),
            "--nice",
            str(self.niceness),
        ]
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = "1"  # one core for the child: the other stays with the serving team
        if self.inductor_cache is not None:
            env["TORCHINDUCTOR_CACHE_DIR"] = str(self.inductor_cache)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        if self._cancelled:
            return "cancelled"
        t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
        )
        out, err = self._proc.communicate()
        self.report["build_s"] = round(time.perf_counter() - t0, 1)
        if self._cancelled:
            return "cancelled"
        result: dict[str, Any] = {}
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    result = json.loads(line)
                break
        if self._proc.returncode != 0 or not result.get("ok"):
            tail = (err.strip().splitlines() or [""])[-1]
            return str(result.get("reason") or f"the builder exited with {self._proc.returncode}: {tail}")
        self.report["graph_s"] = result.get("build_s")
        return None

    def _settle(self, why: str | None) -> None:
        if why is None:
            self.state = True
            log.info("compiled decode step ready (%s)", self.report)
        else:
            self.state, self.reason = False, why
            log.warning("decode step stays eager: %s", why)
        self.done.set()


def _builder_main(argv: Sequence[str]) -> int:
    """The builder child: rebuild the served model from its recipe, compile its step, write the artifact; the last
    line of stdout is a JSON report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.compile", description=_builder_main.__doc__)
    parser.add_argument("--recipe", required=True, help="ModelRecipe as JSON")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch-sizes", default="1,2")
    parser.add_argument("--nice", type=int, default=0)
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    try:
        recipe = ModelRecipe(**json.loads(args.recipe))
        loaded, _ = recipe.build()
        # This process only traces and checks a few positions: leave the cache unwritten, so that its pages never
        # take memory (1.45 GB for SmolLM2).
        for cache in loaded.model.caches():
            cache.k, cache.v = torch.empty_like(cache.k), torch.empty_like(cache.v)
        key = step_key(loaded.model, recipe, [int(b) for b in args.batch_sizes.split(",")])
        meta = build_artifact(loaded.model, key, args.out)
    except Exception as exc:  # reported to the parent as a reason; the traceback goes to stderr
        log.exception("building the decode step failed")
        print(json.dumps({"ok": False, "reason": f"{type(exc).__name__}: {_first_line(exc)}"}), flush=True)
        return 1
    print(json.dumps({"ok": True, "build_s": meta["build_s"]}), flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(_builder_main(sys.argv[1:]))
