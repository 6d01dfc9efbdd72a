"""A compiled single-token decode step: ``torch.compile`` (Inductor) over ``Transformer.forward_positions``.

Why: decoding one token of a small model is a few milliseconds of kernel work buried under thousands of tiny
eager ops — casts around the quantized kernels, RMSNorm's pieces, RoPE's roll and adds, views — each paying
Python and dispatcher overhead. Inductor fuses those element-wise chains into a handful of generated C++
loops and calls the matmul kernels directly; on SmolLM2-135M it takes a decode step from about 14 ms to 9
(``bench/engine.py``). Prefill is left eager: it is dominated by the matmuls already.

The price is a compile when a model loads (SmolLM2 for one row and for batches: 75–100 s on two cores with an
empty cache, 15–20 s from the cache), so:

- ``compile_decode`` warms the graphs up at load time, on the model's own KV cache (the scratch positions it
  writes are overwritten by the next prefill before anything reads them), for one row and for a batch, so no
  request ever waits for a compile.
- Inductor's on-disk cache lives where the caller says (the daemon's cache directory), which a restart reuses.
- Anything that goes wrong — no C++ compiler on a Pi, an Inductor bug — leaves the model in eager mode and
  says why in the report, unless compilation was demanded.

Serving skips Dynamo's guard checks (``skip_guard_eval_unsafe``: about 1 ms of a 8 ms step on SmolLM2). That
is sound here because the step is reached only through ``Transformer.forward`` for one token per row on the
cache it was compiled with, under inference mode, with int64 tokens and positions; the only thing that varies
is the row count, and the guards that tell the one-row graph from the batch graph still run. What the
warm-up specialises on (cache row 0, at least two positions) ``Transformer.forward`` checks before it calls
the step: a one-token prompt, or a one-token prefill chunk in another row, runs eager instead. Reallocating or
dropping the cache drops the compiled step (``Transformer.setup_cache``).

One compiled model per process: compiling one drops the compiled steps of any other (``torch.compiler.reset``),
so a daemon that switches models neither piles up graphs against Dynamo's recompile limit nor keeps an
unloaded model's graphs alive. Graphs are specialised on grad mode: every step runs under
``torch.inference_mode`` (as the scheduler does) so a caller's mode can never trigger a silent recompile.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.model import Transformer

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


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
) -> dict[str, Any]:
    """Compile ``model``'s single-token step and warm it up for ``batch_sizes`` rows; returns a report.

    The model's KV cache must be allocated (``setup_cache``): the warm-up writes scratch keys at position 1
    of the first rows. ``mode``: ``auto`` compiles when a C++ compiler is present and falls back to eager on
    any failure; ``on`` raises ``CompileFailed`` instead; ``off`` does nothing.
    """
    if mode not in MODES:
        raise ValueError(f"compile must be one of {', '.join(MODES)}, got {mode!r}")
    model.compiled_decode = None
    if mode == "off":
        return {"compiled": False, "reason": "off"}
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
    model.compiled_decode = step
    seconds = time.perf_counter() - t0
    log.info("compiled the decode step for batch sizes %s in %.1f s", sizes, seconds)
    return {"compiled": True, "compile_s": round(seconds, 1), "batch_sizes": sizes}


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


def _give_up(mode: str, reason: str) -> dict[str, Any]:
    if mode == "on":
        raise CompileFailed(f"cannot compile the decode step: {reason}")
    log.warning("decode step stays eager: %s", reason)
    return {"compiled": False, "reason": reason}
