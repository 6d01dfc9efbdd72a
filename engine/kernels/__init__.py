"""Enigma's own CPU kernels (``cpu_kernels.cpp``): batched Q4/int8 matmuls and decode attention for AVX-512 BF16.

Why our own: PyTorch's weight-only int4/int8 CPU kernels dequantize each weight once per activation row, so a
decode step of 8 rows costs about 3× one row and continuous batching buys little. These dequantize a block of
32 weights once into a register and multiply it into every row with one bf16 dot-product instruction; see
the C++ source for the layout. Where the CPU has AMX (Sapphire Rapids and later), batches of two rows and more
(a batched decode step, a prefill) run on its tiles instead (``amx.cpp``): 8 rows then cost about 1.5× one
row, not 3×. They need an x86 CPU with AVX-512 BF16 (Zen 4, Sapphire Rapids and later)
and a C++ compiler: the source is built once with ``torch.utils.cpp_extension`` (about 25 s on two cores)
into a cache directory and loaded from there afterwards. Anywhere else, the engine keeps PyTorch's kernels.

``load()`` builds and registers the ops (``torch.ops.enigma.*``); nothing builds them implicitly, so a model
only switches to them when inference preparation asks (``engine.quant.prepare_for_inference``).
``ENIGMA_KERNELS=off`` in the environment disables them; ``ENIGMA_AMX=off`` keeps them off AMX tiles.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
SOURCES = (SOURCE, SOURCE.with_name("amx.cpp"))
_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "f16c", "fma")
_CFLAGS = ["-O3", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16", "-mf16c", "-mfma"]
_CFLAGS += ["-mamx-tile", "-mamx-bf16"]  # used only where amx.cpp finds AMX at run time
# at::parallel_for is an inline OpenMP loop: without -fopenmp it runs on one thread. The library then needs
# libgomp.so.1, which resolves to the copy torch has already loaded (one OpenMP runtime, one thread team).
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_state: dict[str, object] = {"loaded": False, "reason": "not loaded yet"}


def loaded() -> bool:
    """Whether the ops are registered in this process (cheap: model code checks it on every step)."""
    return bool(_state["loaded"])


def reason() -> str:
    """Why the kernels are not in use ('' when they are)."""
    return "" if loaded() else str(_state["reason"])


def amx() -> bool:
    """Whether the matmuls run batches of rows on AMX tiles (Sapphire Rapids and later; see ``amx.cpp``)."""
    return loaded() and bool(torch.ops.enigma.amx_enabled())


def set_amx(on: bool) -> bool:
    """Use AMX for batches where the CPU has it (``on``) or the vector kernels everywhere; returns ``amx()``."""
    if not loaded():
        return False
    return bool(torch.ops.enigma.set_amx(on))


def unsupported() -> str | None:
    """Why this machine cannot run the kernels, or None when it can."""
    if _off(os.environ.get("ENIGMA_KERNELS", "")):
        return "disabled by ENIGMA_KERNELS"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs x86-64 with AVX-512 BF16, this is {platform.machine()}"
    missing = [f for f in _FLAGS if f not in _cpu_flags()]
    if missing:
        return f"the CPU lacks {', '.join(missing)}"
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler to build them"
    return None


def _off(value: str) -> bool:
    return value.lower() in ("0", "off", "false", "no")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _ninja_on_path() -> None:
    """torch's extension builder runs ``ninja``; the venv's copy (the ``ninja`` package) may not be on PATH when
    the interpreter is started by its full path, as systemd does."""
    venv_bin = Path(sys.executable).parent
    if shutil.which("ninja") is None and (venv_bin / "ninja").exists():
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"


def default_build_dir() -> Path:
    """Where built kernels are kept: per torch version, beside Inductor's cache (systemd's CacheDirectory)."""
    root = os.environ.get("CACHE_DIRECTORY") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    base = Path(root) if os.environ.get("CACHE_DIRECTORY") else Path(root) / "enigma"
    return base / "kernels" / f"torch-{torch.__version__.replace('+', '_')}"


def load(build_dir: Path | None = None) -> bool:
    """Build (once, cached on disk) and register the kernels; False, with ``reason()`` set, if they cannot be."""
    with _lock:
        if loaded():
            return True
        why = unsupported()
        if why is not None:
            _state["reason"] = why
            return False
        build_dir = build_dir or default_build_dir()
        _ninja_on_path()
        try:
            from torch.utils import cpp_extension

            build_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            cpp_extension.load(
                name="enigma_cpu_kernels",
                sources=[str(p) for p in SOURCES],
                extra_cflags=_CFLAGS,
                extra_ldflags=_LDFLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
            _register_fakes()
        except Exception as exc:  # a failed build leaves PyTorch's kernels in use; say why
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _state["reason"] = f"build failed: {type(exc).__name__}: {first}"
            log.warning("enigma CPU kernels unavailable: %s", _state["reason"])
            return False
        _state.update(loaded=True, reason="")
        if _off(os.environ.get("ENIGMA_AMX", "")):
            set_amx(False)
        log.info("enigma CPU kernels ready in %.1f s (%s)", time.perf_counter() - t0, build_dir)
        return True


def _register_fakes() -> None:
    """Shapes for tracing (torch.compile runs the model on fake tensors first)."""

    @torch.library.register_fake("enigma::q4_linear")
    def _q4(x: Tensor, codes: Tensor, scales: Tensor, offsets: Tensor, out_features: int) -> Tensor:
        return x.new_empty((x.shape[0], out_features), dtype=torch.float32)

    @torch.library.register_fake("enigma::i8_linear")
    def _i8(x: Tensor, w: Tensor, scales: Tensor) -> Tensor:
        return x.new_empty((x.shape[0], scales.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("enigma::decode_attention")
    def _attn(q: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int, pos: Tensor, scale: float) -> Tensor:
        return q.new_empty(q.shape)
