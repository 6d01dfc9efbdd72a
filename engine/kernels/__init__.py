"""Enigma's own CPU kernels: batched Q4/int8 matmuls and decode attention, one set per instruction set.

Why our own: PyTorch's weight-only int4/int8 CPU kernels dequantize each weight once per activation row, so a
decode step of 8 rows costs about 3× one row and continuous batching buys little. Ours expand a block of
weights once into registers and multiply it into every row. Sets, best first, chosen from the CPU's features:

- ``avx512``: AVX-512 BF16 dot products, with AMX tiles for batches of rows (``cpu_kernels.cpp``,
  ``amx.cpp``); weights in 16-lane tiles ("lane16"). Chosen where the CPU has AMX (Sapphire Rapids and later);
  on AVX-512 CPUs without it (Zen 4, Ice Lake…) the int8 sets below measured faster and come first
  (``preference``).
- ``avx512-vnni`` / ``avx-vnni``: ``avx2.cpp`` built with VPDPBUSD (AVX512-VNNI on 256-bit registers: Zen 4,
  Ice Lake and later Xeons; AVX-VNNI: Alder Lake and later Cores), one instruction where AVX2 needs three.
- ``avx2``: AVX2 + FMA + F16C (Intel since Haswell, every AMD Zen): the activations are quantized to int8 per
  block of 32 and multiplied as integers (``avx2.cpp``); weights in 8-lane tiles ("tile8", ``tile8.h``).
- ``neon-dot`` / ``neon``: aarch64 with and without the dot-product instructions (Raspberry Pi 5 / 4), the
  same tile8 layout (``neon.cpp``). Checked under qemu-user on x86 by ``tests/engine/test_kernels_cross.py``.

Each set is a torch extension built once with ``torch.utils.cpp_extension`` (10–30 s on two cores) into a
cache directory and loaded from there afterwards; it registers its ops under its own namespace
(``torch.ops.enigma_avx2.q4_linear``…), so a process can load several side by side (the tests compare them).
Anywhere no set runs, the engine keeps PyTorch's kernels.

``load()`` builds and registers the set this machine should use and makes it the engine's default
(``active()``); nothing builds implicitly, so a model switches to them only when inference preparation asks
(``engine.quant.prepare_for_inference``). ``ENIGMA_KERNELS`` forces a choice: ``off`` (PyTorch's kernels), or
a set's name (``avx512``, ``avx512-vnni``, ``avx-vnni``, ``avx2``, ``neon``, ``neon-dot``) — refused, with the
reason, where the CPU lacks it.
``ENIGMA_AMX=off`` keeps the avx512 set off AMX tiles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


@dataclass(frozen=True)
class KernelSet:
    """One instruction set's build: what the CPU must have, how to compile it, which layout it reads."""

    name: str
    machine: str  # platform.machine() family: x86_64 or aarch64
    cpu_flags: tuple[str, ...]  # /proc/cpuinfo "flags" (x86) or "Features" (ARM) it needs
    sources: tuple[str, ...]
    cflags: tuple[str, ...]
    layout: str  # "lane16" (cpu_kernels.cpp) or "tile8" (tile8.h)

    @property
    def namespace(self) -> str:
        return "enigma_" + self.name.replace("-", "_")


_COMMON = ("-O3", "-fopenmp")
SETS: dict[str, KernelSet] = {
    s.name: s
    for s in (
        KernelSet(
            "avx512",
            "x86_64",
            ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "f16c", "fma"),
            ("cpu_kernels.cpp", "amx.cpp"),
            # -mamx-*: used only where amx.cpp finds AMX at run time.
            (
                *_COMMON,
                "-mavx512f",
                "-mavx512bw",
                "-mavx512vl",
                "-mavx512dq",
                "-mavx512bf16",
                "-mf16c",
                "-mfma",
                "-mamx-tile",
                "-mamx-bf16",
            ),
            "lane16",
        ),
        KernelSet(
            "avx512-vnni",
            "x86_64",
            ("avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512_vnni"),
            ("tile8_ops.cpp", "avx2.cpp"),
            (
                *_COMMON,
                "-mavx2",
                "-mfma",
                "-mf16c",
                "-mavx512vl",
                "-mavx512vnni",
                "-DENIGMA_OPS_NS=enigma_avx512_vnni",
            ),
            "tile8",
        ),
        KernelSet(
            "avx-vnni",
            "x86_64",
            ("avx2", "fma", "f16c", "avx_vnni"),
            ("tile8_ops.cpp", "avx2.cpp"),
            (*_COMMON, "-mavx2", "-mfma", "-mf16c", "-mavxvnni", "-DENIGMA_OPS_NS=enigma_avx_vnni"),
            "tile8",
        ),
        KernelSet(
            "avx2",
            "x86_64",
            ("avx2", "fma", "f16c"),
            ("tile8_ops.cpp", "avx2.cpp"),
            (*_COMMON, "-mavx2", "-mfma", "-mf16c", "-DENIGMA_OPS_NS=enigma_avx2"),
            "tile8",
        ),
        KernelSet(
            "neon-dot",
            "aarch64",
            ("asimd", "asimddp"),
            ("tile8_ops.cpp", "neon.cpp"),
            (*_COMMON, "-march=armv8.2-a+dotprod", "-DENIGMA_OPS_NS=enigma_neon_dot"),
            "tile8",
        ),
        KernelSet(
            "neon",
            "aarch64",
            ("asimd",),
            ("tile8_ops.cpp", "neon.cpp"),
            (*_COMMON, "-march=armv8-a", "-DENIGMA_OPS_NS=enigma_neon"),
            "tile8",
        ),
    )
}
ISAS = tuple(SETS)  # best first
# at::parallel_for is an inline OpenMP loop: without -fopenmp it runs on one thread. The library then needs
# libgomp.so.1, which resolves to the copy torch has already loaded (one OpenMP runtime, one thread team).
_LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded: dict[str, bool] = {}
_reasons: dict[str, str] = {}
_active: list[str] = []  # the set load() chose for the engine (at most one)


def _off(value: str) -> bool:
    return value.lower() in ("0", "off", "false", "no", "torch", "none")


def _machine() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ("flags" on x86, "Features" on ARM); empty if unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def unsupported(isa: str | None = None) -> str | None:
    """Why this machine cannot run ``isa`` (by default the set ``ENIGMA_KERNELS`` or the CPU picks), or None."""
    if isa is None:
        choice = os.environ.get("ENIGMA_KERNELS", "")
        if _off(choice):
            return "disabled by ENIGMA_KERNELS"
        if choice not in ("", "auto"):
            if choice not in SETS:
                return f"ENIGMA_KERNELS={choice!r} names no kernel set; choose off, auto or {', '.join(ISAS)}"
            isa = choice
        else:
            runnable = [name for name in ISAS if unsupported(name) is None]
            return None if runnable else _why_none()
    if isa not in SETS:
        raise ValueError(f"unknown kernel set {isa!r}; choose one of {', '.join(ISAS)}")
    ks = SETS[isa]
    if _machine() != ks.machine:
        return f"{isa} needs {ks.machine}, this is {platform.machine()}"
    flags = cpu_flags()
    missing = [f for f in ks.cpu_flags if f not in flags]
    if missing:
        return f"{isa}: the CPU lacks {', '.join(missing)}"
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler to build them"
    return None


def _why_none() -> str:
    return "; ".join(str(unsupported(name)) for name in ISAS if SETS[name].machine == _machine()) or (
        f"no kernel set for {platform.machine()}"
    )


def choose() -> str | None:
    """The set this machine should use: ``ENIGMA_KERNELS`` if it names one, else the best the CPU runs."""
    choice = os.environ.get("ENIGMA_KERNELS", "")
    if _off(choice):
        return None
    if choice in SETS:
        return choice if unsupported(choice) is None else None
    if choice not in ("", "auto"):
        return None
    return next((name for name in preference() if unsupported(name) is None), None)


def preference() -> tuple[str, ...]:
    """The sets in the order ``auto`` tries them on this CPU.

    ``avx512`` leads only where the CPU has AMX: without tiles, the int8 sets (avx512-vnni, avx2) served eight
    streams 22–34 % faster on the same AVX-512 BF16 Xeon (docs/engine.md), with greedy output as close to the
    float model's."""
    flags = cpu_flags()
    if "amx_bf16" in flags and "amx_tile" in flags:
        return ISAS
    return tuple(sorted(ISAS, key=lambda name: name == "avx512"))


def active() -> str | None:
    """The set the engine uses (what ``load()`` chose), or None: PyTorch's kernels."""
    return _active[0] if _active else None


def loaded(isa: str | None = None) -> bool:
    """Whether ``isa`` (default: the engine's set) is registered in this process. Cheap."""
    name = isa or active()
    return name is not None and _loaded.get(name, False)


def reason(isa: str | None = None) -> str:
    """Why ``isa`` (default: the set this machine should use) is not in use ('' when it is)."""
    name = isa if isa is not None else choose()
    if name is None:
        return str(unsupported())
    if loaded(name) and (isa is not None or active() == name):
        return ""
    return _reasons.get(name) or str(unsupported(name) or "not loaded yet")


def ops(isa: str) -> Any:
    """The op namespace of a loaded set: ``ops("avx2").q4_linear(...)``."""
    return getattr(torch.ops, SETS[isa].namespace)


def layout(isa: str) -> str:
    return SETS[isa].layout


def amx() -> bool:
    """Whether the avx512 set runs batches of rows on AMX tiles (Sapphire Rapids and later; see ``amx.cpp``)."""
    return loaded("avx512") and bool(torch.ops.enigma_avx512.amx_enabled())


def set_amx(on: bool) -> bool:
    """Use AMX for batches where the CPU has it (``on``) or the vector kernels everywhere; returns ``amx()``."""
    if not loaded("avx512"):
        return False
    return bool(torch.ops.enigma_avx512.set_amx(on))


def describe() -> str:
    """One line for logs, benchmarks and test reports: the CPU's relevant features and the set in use."""
    x86 = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16")
    wanted = (*x86, "asimd", "asimddp")
    flags = cpu_flags()
    has = " ".join(f for f in wanted if f in flags) or "none of the known SIMD flags"
    chosen = choose()
    if chosen is None:
        return f"{_machine()} [{has}]: PyTorch's kernels ({unsupported()})"
    amx_note = ""
    if chosen == "avx512":
        amx_note = ", AMX off by ENIGMA_AMX" if _off(os.environ.get("ENIGMA_AMX", "")) else ""
    return f"{_machine()} [{has}]: enigma {chosen} kernels{amx_note}"


def _ninja_on_path() -> None:
    """torch's extension builder runs ``ninja``; the venv's copy (the ``ninja`` package) may not be on PATH when
    the interpreter is started by its full path, as systemd does."""
    venv_bin = Path(sys.executable).parent
    if shutil.which("ninja") is None and (venv_bin / "ninja").exists():
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"


def build_dir(root: Path | None = None) -> Path:
    """Where the sets are built under ``root``: one directory per torch version, whose headers they compile against.

    The engine keeps no idea of where a deployment keeps its files: the daemon passes its cache directory
    (``bus.paths``). Without one, torch's own extension cache is used (``$TORCH_EXTENSIONS_DIR``, else its
    per-user cache), as for any other torch extension.
    """
    if root is None:
        from torch.utils import cpp_extension

        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()) / "enigma"
    return root / f"torch-{torch.__version__.replace('+', '_')}"


def load(isa: str | None = None, build_root: Path | None = None) -> bool:
    """Build (once, cached on disk) and register a kernel set; False, with ``reason()`` set, if it cannot be.

    Without ``isa``: the set this machine should use (``choose()``), which becomes the engine's ``active()``.
    With one: that set only, for tests and benchmarks that compare sets; the engine's choice is unchanged.
    ``build_root``: where builds are kept (``build_dir``).
    """
    with _lock:
        name = isa if isa is not None else choose()
        if name is None:
            return False
        ok = _load_set(name, build_root)
        if ok and isa is None:
            _active[:] = [name]
        return ok


def _load_set(name: str, build_root: Path | None) -> bool:
    if _loaded.get(name):
        return True
    why = unsupported(name)
    if why is not None:
        _reasons[name] = why
        return False
    ks = SETS[name]
    build = build_dir(build_root) / name
    _ninja_on_path()
    try:
        from torch.utils import cpp_extension

        build.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with _sole_builder(build):
            cpp_extension.load(
                name=f"enigma_kernels_{ks.namespace}",
                sources=[str(HERE / s) for s in ks.sources],
                extra_cflags=list(ks.cflags),
                extra_ldflags=_LDFLAGS,
                build_directory=str(build),
                is_python_module=False,
                verbose=False,
            )
        _register_fakes(ks.namespace)
    except Exception as exc:  # a failed build leaves PyTorch's kernels in use; say why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _reasons[name] = f"build failed: {type(exc).__name__}: {first}"
        log.warning("enigma %s kernels unavailable: %s", name, _reasons[name])
        return False
    _loaded[name] = True
    _reasons.pop(name, None)
    if name == "avx512" and _off(os.environ.get("ENIGMA_AMX", "")):
        set_amx(False)
    log.info("enigma %s kernels ready in %.1f s (%s)", name, time.perf_counter() - t0, build)
    return True


@contextlib.contextmanager
def _sole_builder(build: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the build directory while torch builds or loads a set in it.

    torch's own build lock is a plain file (``lock``) that every later load waits on, forever, until it is
    removed; a build killed midway (OOM, power loss, a timeout) leaves it behind and the daemon then never
    starts. An ``flock`` dies with its holder, so whoever holds ours is the only builder and a ``lock`` file it
    finds is stale. Other processes wait here for the build in progress, as they would on torch's file.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's file lock alone
        yield
        return
    with open(build / ".enigma-builder.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            stale = build / "lock"
            if stale.exists():
                log.warning("removing a stale build lock left by a build that was stopped: %s", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _register_fakes(ns: str) -> None:
    """Shapes for tracing (torch.compile runs the model on fake tensors first)."""

    @torch.library.register_fake(f"{ns}::q4_linear")
    def _q4(x: Tensor, codes: Tensor, scales: Tensor, offsets: Tensor, out_features: int) -> Tensor:
        return x.new_empty((x.shape[0], out_features), dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::i8_linear")
    def _i8(x: Tensor, w: Tensor, scales: Tensor) -> Tensor:
        return x.new_empty((x.shape[0], scales.shape[0]), dtype=torch.float32)

    @torch.library.register_fake(f"{ns}::decode_attention")
    def _attn(q: Tensor, k_cache: Tensor, v_cache: Tensor, slot: int, pos: Tensor, scale: float) -> Tensor:
        return q.new_empty(q.shape)
