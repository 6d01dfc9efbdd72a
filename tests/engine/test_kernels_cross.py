"""The tile8 kernels (engine/kernels/tile8.h) of every instruction set, whatever the machine: the aarch64 NEON
builds (neon.cpp, plain and with dot products) under qemu-user on x86 or natively on aarch64, and the AVX2 build
(avx2.cpp) natively on x86, each linked into the standalone driver tile8_check.cpp and compared with references
computed here in torch from the same inputs. The packed weight layouts are built here from random codes,
following tile8.h; the driver's protocol is described at the top of tile8_check.cpp.

A set is skipped, with the reason, where its compiler, emulator or CPU features are missing. On x86 the aarch64
tools come from Debian's g++-aarch64-linux-gnu and qemu-user packages.
"""

from __future__ import annotations

import math
import platform
import re
import resource
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

KERNELS = Path(__file__).resolve().parents[2] / "engine" / "kernels"
ISAS = ("neon", "neon-dot", "avx2")
ON_ARM = platform.machine().lower() in ("aarch64", "arm64")
ON_X86 = platform.machine().lower() in ("x86_64", "amd64")
CROSS_CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"
# qemu's CPU models: the Cortex-A72 (Raspberry Pi 4) has no dot-product instructions, so a plain build that used
# one would die with SIGILL; "max" has every extension qemu emulates, SDOT among them.
QEMU_CPU = {"neon": "cortex-a72", "neon-dot": "max"}
MARCH = {"neon": "-march=armv8-a", "neon-dot": "-march=armv8.2-a+dotprod"}
DOT_INSN = re.compile(r"\b(?:s|u|us|su)dot\b")


def _cpu_flags() -> set[str]:
    """x86 'flags' or aarch64 'Features' of /proc/cpuinfo's first processor."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    found = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return set(found.group(1).split()) if found else set()


def _native_cxx() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


@dataclass
class Plan:
    """How one set is built and run here, or why it cannot be."""

    cxx: str = ""
    flags: tuple[str, ...] = ()
    impl: str = ""
    objdump: str = ""
    run_prefix: tuple[str, ...] = ()
    skip: str | None = None


def _plan(isa: str) -> Plan:
    if isa == "avx2":
        if not ON_X86:
            return Plan(skip=f"avx2 needs x86-64, this is {platform.machine()}")
        if not (KERNELS / "avx2.cpp").exists():
            return Plan(skip="engine/kernels/avx2.cpp does not exist yet")
        missing = sorted({"avx2", "fma", "f16c"} - _cpu_flags())
        if missing:
            return Plan(skip=f"avx2: the CPU lacks {', '.join(missing)}")
        cxx = _native_cxx()
        if cxx is None:
            return Plan(skip="no native C++ compiler (g++ or c++)")
        return Plan(cxx, ("-O2", "-mavx2", "-mfma", "-mf16c"), "avx2.cpp", "objdump")
    if ON_ARM:
        cxx = _native_cxx()
        if cxx is None:
            return Plan(skip="no native C++ compiler (g++ or c++)")
        if isa == "neon-dot" and "asimddp" not in _cpu_flags():
            return Plan(skip="neon-dot: this aarch64 CPU lacks the dot-product instructions (asimddp)")
        return Plan(cxx, ("-O2", MARCH[isa]), "neon.cpp", "objdump")
    if shutil.which(CROSS_CXX) is None:
        return Plan(skip=f"{CROSS_CXX} not found (Debian: apt-get install g++-aarch64-linux-gnu)")
    if shutil.which(QEMU) is None:
        return Plan(skip=f"{QEMU} not found (Debian: apt-get install qemu-user)")
    return Plan(
        CROSS_CXX,
        ("-O2", "-static", MARCH[isa]),
        "neon.cpp",
        "aarch64-linux-gnu-objdump",
        (QEMU, "-cpu", QEMU_CPU[isa]),
    )


def _no_core_dump() -> None:
    # qemu-user writes a core file into the working directory when the guest dies of a signal.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclass
class Request:
    """One request to the driver: its header line, input arrays, and the (dtype, count) of each output array."""

    header: str
    inputs: Sequence[np.ndarray]
    outputs: Sequence[tuple[str, int]]

    def encode(self) -> bytes:
        return (self.header + "\n").encode() + b"".join(np.ascontiguousarray(a).tobytes() for a in self.inputs)


@dataclass
class Driver:
    """tile8_check built with one set's implementation."""

    isa: str
    exe: Path
    impl_object: Path
    plan: Plan
    workdir: Path = field(repr=False)

    def command(self, cpu: str | None = None) -> list[str]:
        prefix = list(self.plan.run_prefix)
        if cpu is not None and prefix:
            prefix[prefix.index("-cpu") + 1] = cpu
        return [*prefix, str(self.exe)]

    def call(self, stdin: bytes, cpu: str | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.command(cpu),
            input=stdin,
            capture_output=True,
            timeout=240,
            check=False,
            cwd=self.workdir,
            preexec_fn=_no_core_dump,
        )

    def run(self, requests: Sequence[Request]) -> list[list[np.ndarray]]:
        """All requests in one process (process start dominates under qemu); each one's output arrays."""
        done = self.call(b"".join(r.encode() for r in requests))
        assert done.returncode == 0, f"{self.isa} driver exited {done.returncode}: {done.stderr.decode()}"
        out, at, results = done.stdout, 0, []
        for r in requests:
            arrays = []
            for dtype, count in r.outputs:
                arrays.append(np.frombuffer(out, dtype=dtype, count=count, offset=at).copy())
                at += np.dtype(dtype).itemsize * count
            results.append(arrays)
        assert at == len(out), f"{len(out) - at} bytes of output left over"
        return results


class Builds:
    """Each set's driver, built once per session on first use into a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.drivers: dict[str, Driver | str] = {}

    def get(self, isa: str) -> Driver:
        if isa not in self.drivers:
            self.drivers[isa] = self._build(isa)
        got = self.drivers[isa]
        if isinstance(got, str):
            pytest.skip(got)
        return got

    def _build(self, isa: str) -> Driver | str:
        plan = _plan(isa)
        if plan.skip is not None:
            return plan.skip
        out = self.root / isa
        out.mkdir()
        obj, exe = out / "impl.o", out / "tile8_check"
        base = ["nice", plan.cxx, "-std=c++17", *plan.flags]
        for cmd in (
            [*base, "-c", str(KERNELS / plan.impl), "-o", str(obj)],
            [*base, str(KERNELS / "tile8_check.cpp"), str(obj), "-o", str(exe)],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, f"building the {isa} driver failed:\n{' '.join(cmd)}\n{done.stderr}"
        return Driver(isa, exe, obj, plan, out)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("tile8_check"))


@pytest.fixture(params=ISAS)
def driver(request: pytest.FixtureRequest, builds: Builds) -> Driver:
    """Each set's driver where this machine can build and run it; skipped, with the reason, where not."""
    return builds.get(request.param)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- layouts and references (tile8.h) ----------------------------------------------------------------------


def pack_q4(
    codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes (n, k) in 0..15, scales (n, k / 32) fp16, mins (n, k / 32) fp32 → tile8's (tiles, groups, 4, 32)
    uint8 codes, (tiles, groups, 8) scales and mins, padding outputs zero."""
    n, k = codes.shape
    tiles, groups = -(-n // 8), k // 32
    pad = tiles * 8 - n
    c = F.pad(codes.to(torch.uint8), (0, 0, 0, pad))
    # [t, j, g, c, h, e]: output 8t + j, input 32g + 8c + 4h + e → byte 4j + e of chunk (t, g, c), nibble h.
    c6 = c.reshape(tiles, 8, groups, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
    packed = (c6[..., 0] | (c6[..., 1] << 4)).reshape(tiles, groups, 4, 32).contiguous()

    def per_tile(a: torch.Tensor) -> torch.Tensor:
        return F.pad(a, (0, 0, 0, pad)).reshape(tiles, 8, groups).transpose(1, 2).contiguous()

    return packed, per_tile(scales), per_tile(mins)


def pack_i8(w: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (n, k) int8, scales (n,) → tile8's (tiles, k / 4, 32), byte 4j + e of chunk c holding weight
    (8t + j, 4c + e), and the scales padded with zeros to whole tiles."""
    n, k = w.shape
    tiles = -(-n // 8)
    pad = tiles * 8 - n
    packed = F.pad(w, (0, 0, 0, pad)).reshape(tiles, 8, k // 4, 4).permute(0, 2, 1, 3).reshape(tiles, k // 4, 32)
    return packed.contiguous(), F.pad(scales, (0, pad))


def reference_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tile8.h's activations: per block of 32, dx = max|x| / 127 and x8 = x / dx rounded to nearest even (0 where
    dx is 0), clamped to ±127; also the fp32 quotients, to find exact halves."""
    rows, k = x.shape
    blocks = x.reshape(rows, k // 32, 32)
    dx = blocks.abs().amax(-1) / 127
    quot = torch.where(dx[..., None] > 0, blocks / torch.where(dx > 0, dx, 1)[..., None], 0)
    x8 = torch.round(quot).clamp(-127, 127)
    return x8.reshape(rows, k), dx, quot.reshape(rows, k)


def _check_written(y: torch.Tensor, rows: int, ldy: int, n: int, t0: int, t1: int, what: str) -> torch.Tensor:
    """The outputs in [8 t0, min(8 t1, n)) of every row; everything else must have kept the driver's NaN."""
    y = y.reshape(rows, ldy)
    lo, hi = 8 * t0, min(8 * t1, n)
    outside = torch.ones(ldy, dtype=torch.bool)
    outside[lo:hi] = False
    assert torch.isnan(y[:, outside]).all(), f"{what}: wrote outside outputs [{lo}, {hi}) of rows {rows}"
    got = y[:, lo:hi]
    assert not torch.isnan(got).any(), f"{what}: left outputs in [{lo}, {hi}) unwritten"
    return got


def _tile_ranges(tiles: int) -> list[tuple[int, int]]:
    """All tiles, inner ones, the (partial) last one alone, the first one alone, and an empty range."""
    ranges = [(0, tiles), (tiles - 1, tiles), (0, 1), (min(2, tiles), min(2, tiles))]
    if tiles > 2:
        ranges.append((1, tiles - 1))
    return ranges


def _activations(g: torch.Generator, rows: int, k: int, extreme: bool) -> tuple[torch.Tensor, ...]:
    """x8, dx, sx as the kernels take them, random (or at ±127 to reach the integer sums' limits)."""
    if extreme:
        x8 = torch.where(torch.rand(rows, k, generator=g) < 0.5, -127, 127).to(torch.int8)
    else:
        x8 = torch.randint(-127, 128, (rows, k), generator=g, dtype=torch.int8)
    dx = torch.rand(rows, k // 32, generator=g) * 0.02 + 1e-3
    sx = torch.randn(rows, k // 32, generator=g) * 4
    return x8, dx, sx


def _quantize_request(x: torch.Tensor) -> Request:
    rows, k = x.shape
    return Request(
        f"quantize {rows} {k}", [x.numpy()], [("i1", rows * k), ("<f4", rows * k // 32), ("<f4", rows * k // 32)]
    )


# ---- tests ---------------------------------------------------------------------------------------------------


def test_isa_names_the_build(driver: Driver) -> None:
    done = driver.call(b"isa\n")
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == f"{driver.isa}\n"


def test_plain_neon_build_has_no_dot_product_instruction(builds: Builds) -> None:
    """The plain build must run on a Cortex-A72: no SDOT/UDOT in its code (all its other tests also run on
    qemu's cortex-a72 model, which refuses them); the dot build does use them, and that model kills it."""

    def disassembly(d: Driver) -> str:
        done = subprocess.run(
            [d.plan.objdump, "-d", str(d.impl_object)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    plain = builds.get("neon")
    assert not DOT_INSN.search(disassembly(plain)), "the plain NEON build contains dot-product instructions"
    dot = builds.get("neon-dot")
    assert DOT_INSN.search(disassembly(dot)), "the neon-dot build contains no dot-product instruction"
    if not dot.plan.run_prefix:
        return  # native aarch64: no CPU model to switch to
    groups, n = 1, 8
    request = Request(
        f"q4 1 {n} {groups} 0 1 {n}",
        [
            np.zeros(128 * groups, np.uint8),
            np.zeros(8 * groups, np.uint16),
            np.zeros(8 * groups, np.float32),
            np.zeros(32 * groups, np.int8),
            np.zeros(groups, np.float32),
            np.zeros(groups, np.float32),
        ],
        [("<f4", n)],
    )
    assert plain.call(request.encode()).returncode == 0
    died = dot.call(request.encode(), cpu="cortex-a72")
    assert died.returncode == -signal.SIGILL, f"exit {died.returncode}: {died.stderr.decode()}"


def test_quantize_rows_matches_the_contract(driver: Driver) -> None:
    g = _gen(1)
    requests, inputs = [], []
    for rows, k in [(1, 32), (3, 96), (5, 576), (2, 64), (8, 2048)]:  # the last: 512 scales
        x = torch.randn(rows, k, generator=g) * torch.logspace(-3, 3, rows)[:, None]
        if k == 96:
            x[0, :32] = 0  # a block of zeros: scale 0, codes 0
            # max 127 so dx is 1: halves are exact ties (to even), the rest just off them
            x[1, :32] = torch.tensor(
                [127.0, -127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.4999998, 64.5]
                + [float(v) + 0.5 for v in range(-10, 10)]
            )
            x[2, 32:64] *= 1e-36  # the scale is subnormal
            x[2, 64:96] *= 1e-30
        inputs.append(x)
        requests.append(_quantize_request(x))
    for x, (x8, dx, sx) in zip(inputs, driver.run(requests), strict=True):
        rows, k = x.shape
        want8, wantd, quot = reference_quantize(x)
        got8 = torch.from_numpy(x8).reshape(rows, k).float()
        assert torch.equal(torch.from_numpy(dx).reshape(wantd.shape), wantd), f"dx differ for {rows}x{k}"
        ties = (quot - quot.floor()) == 0.5
        off = (got8 - want8).abs()
        assert off.max() <= 1, f"x8 off by more than 1 for {rows}x{k}"
        assert not (off[~ties] > 0).any(), f"x8 differ off exact halves for {rows}x{k}"
        # sx is the sum of the quantized block, dx * sum(x8): an exact integer sum, then one fp32 product.
        sums = wantd * got8.reshape(rows, k // 32, 32).sum(-1)
        assert torch.equal(torch.from_numpy(sx).reshape(sums.shape), sums), f"sx differ for {rows}x{k}"


ROW_COUNTS = [1, 3, 4, 5, 8, 17]


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_q4_tiles_match_the_reference(driver: Driver, rows: int) -> None:
    g = _gen(100 + rows)
    cases, requests = [], []
    for n, groups, extreme in [(37, 2, False), (64, 5, False), (5, 18, False), (70, 9, False), (13, 3, True)]:
        k, tiles = 32 * groups, -(-n // 8)
        if extreme:  # the largest integer sums a group can have: codes 15 against ±127
            codes = torch.full((n, k), 15, dtype=torch.uint8)
        else:
            codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
        scales = (torch.rand(n, groups, generator=g) * 0.05 + 0.001).half()
        mins = torch.randn(n, groups, generator=g) * 0.1
        x8, dx, sx = _activations(g, rows, k, extreme)
        packed, ps, pm = pack_q4(codes, scales, mins)
        # float64 reference: sum over groups of scale * dx * sum(code * x8) + min * sx
        dots = torch.einsum(
            "mgi,ngi->mng", x8.double().reshape(rows, groups, 32), codes.double().reshape(n, groups, 32)
        )
        terms = dots * scales.double()[None] * dx.double()[:, None] + mins.double()[None] * sx.double()[:, None]
        ref, bound = terms.sum(-1), terms.abs().sum(-1)
        ldy = n + 3
        for t0, t1 in _tile_ranges(tiles):
            cases.append((n, k, t0, t1, ldy, ref, bound))
            requests.append(
                Request(
                    f"q4 {rows} {n} {groups} {t0} {t1} {ldy}",
                    [
                        packed.numpy(),
                        ps.view(torch.int16).numpy().view(np.uint16),
                        pm.numpy(),
                        x8.numpy(),
                        dx.numpy(),
                        sx.numpy(),
                    ],
                    [("<f4", rows * ldy)],
                )
            )
    for (n, k, t0, t1, ldy, ref, bound), (y,) in zip(cases, driver.run(requests), strict=True):
        what = f"q4 rows={rows} n={n} k={k} tiles [{t0}, {t1})"
        got = _check_written(torch.from_numpy(y), rows, ldy, n, t0, t1, what).double()
        lo, hi = 8 * t0, min(8 * t1, n)
        err = (got - ref[:, lo:hi]).abs()
        assert (err <= 1e-5 * bound[:, lo:hi] + 1e-30).all(), f"{what}: off by {float(err.max()) if err.numel() else 0}"


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_i8_tiles_match_the_reference(driver: Driver, rows: int) -> None:
    g = _gen(200 + rows)
    cases, requests = [], []
    for n, k, extreme in [(37, 64, False), (64, 160, False), (5, 576, False), (70, 288, False), (11, 96, True)]:
        tiles = -(-n // 8)
        if extreme:  # int8's extremes, -128 included: the largest sums of two products in an int16 lane
            w = torch.where(torch.rand(n, k, generator=g) < 0.5, -128, 127).to(torch.int8)
        else:
            w = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        scales = torch.rand(n, generator=g) * 0.01 + 1e-4
        x8, dx, _ = _activations(g, rows, k, extreme)
        packed, ps = pack_i8(w, scales)
        dots = torch.einsum("mbi,nbi->mnb", x8.double().reshape(rows, k // 32, 32), w.double().reshape(n, k // 32, 32))
        terms = dots * dx.double()[:, None] * scales.double()[None, :, None]
        ref, bound = terms.sum(-1), terms.abs().sum(-1)
        ldy = n + 5
        for t0, t1 in _tile_ranges(tiles):
            cases.append((n, k, t0, t1, ldy, ref, bound))
            requests.append(
                Request(
                    f"i8 {rows} {n} {k} {t0} {t1} {ldy}",
                    [packed.numpy(), ps.numpy(), x8.numpy(), dx.numpy()],
                    [("<f4", rows * ldy)],
                )
            )
    for (n, k, t0, t1, ldy, ref, bound), (y,) in zip(cases, driver.run(requests), strict=True):
        what = f"i8 rows={rows} n={n} k={k} tiles [{t0}, {t1})"
        got = _check_written(torch.from_numpy(y), rows, ldy, n, t0, t1, what).double()
        lo, hi = 8 * t0, min(8 * t1, n)
        err = (got - ref[:, lo:hi]).abs()
        assert (err <= 1e-5 * bound[:, lo:hi] + 1e-30).all(), f"{what}: off by {float(err.max()) if err.numel() else 0}"


def test_quantize_then_matmul_approximates_the_float_matmul(driver: Driver) -> None:
    """The pieces chained as tile8_ops.cpp chains them: the driver's own quantized rows into q4 and i8."""
    g = _gen(7)
    rows, n, k = 5, 40, 256
    groups, tiles = k // 32, n // 8
    x = torch.randn(rows, k, generator=g)
    ((x8, dx, sx),) = driver.run([_quantize_request(x)])
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales = (torch.rand(n, groups, generator=g) * 0.02 + 0.01).half()
    mins = -8 * scales.float()
    wq = codes.float() * scales.float().repeat_interleave(32, 1) + mins.repeat_interleave(32, 1)
    wi = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    si = torch.rand(n, generator=g) * 0.01
    packed, ps, pm = pack_q4(codes, scales, mins)
    pw, pws = pack_i8(wi, si)
    (yq,), (yi,) = driver.run(
        [
            Request(
                f"q4 {rows} {n} {groups} 0 {tiles} {n}",
                [packed.numpy(), ps.view(torch.int16).numpy().view(np.uint16), pm.numpy(), x8, dx, sx],
                [("<f4", rows * n)],
            ),
            Request(f"i8 {rows} {n} {k} 0 {tiles} {n}", [pw.numpy(), pws.numpy(), x8, dx], [("<f4", rows * n)]),
        ]
    )
    for got, w in ((yq, wq), (yi, wi.float() * si[:, None])):
        want = x @ w.T
        assert torch.allclose(torch.from_numpy(got).reshape(rows, n), want, atol=0.02 * float(want.abs().max()))


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads", [1, 2, 3, 5])
def test_attend_matches_sdpa(driver: Driver, d: int, heads: int) -> None:
    g = _gen(300 + d + heads)
    lengths = [1, 5, 16, 17, 161]
    scale = 1 / math.sqrt(d)
    cases, requests = [], []
    for length in lengths:
        q = torch.randn(heads, d, generator=g) * 3  # peaked softmaxes too
        k, v = torch.randn(length, d, generator=g), torch.randn(length, d, generator=g)
        cases.append((length, q, k, v))
        requests.append(
            Request(
                f"attend {heads} {length} {d}",
                [np.array([scale], np.float32), q.numpy(), k.numpy(), v.numpy()],
                [("<f4", heads * d)],
            )
        )
    for (length, q, k, v), (out,) in zip(cases, driver.run(requests), strict=True):
        want = F.scaled_dot_product_attention(
            q.double()[None, :, None],
            k.double().expand(1, heads, length, d),
            v.double().expand(1, heads, length, d),
            scale=scale,
        ).reshape(heads, d)
        got = torch.from_numpy(out).reshape(heads, d).double()
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (
            f"attend d={d} heads={heads} len={length}: off by {float((got - want).abs().max())}"
        )
