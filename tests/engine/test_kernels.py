"""enigma's own CPU kernels (engine/kernels), every set this CPU can run: the batched Q4/int8 matmuls and decode
attention compute what the reference computations do, reject bad arguments with a clear message, and the engine
falls back to PyTorch's kernels where no set runs. A set the CPU lacks is skipped with the reason; the aarch64
sets are checked under qemu-user in test_kernels_cross.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import kernels
from engine.attention import SDPA, KernelDecode
from engine.model import ModelConfig, Transformer
from engine.quant import AffineInt4, Int4Linear, Int8Linear, UnsupportedQuantization, prepare_for_inference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=kernels.ISAS)
def isa(request: pytest.FixtureRequest) -> str:
    """Each kernel set, built and loaded where this CPU runs it; skipped, with the reason, where it does not."""
    name = request.param
    why = kernels.unsupported(name)
    if why is not None:
        pytest.skip(why)
    assert kernels.load(name), kernels.reason(name)
    return name


@pytest.fixture(params=["avx512", "avx512-amx", *(name for name in kernels.ISAS if name != "avx512")])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every implementation of the matmuls: each set's vector code, and AMX tiles for two rows and more."""
    name = request.param.removesuffix("-amx")
    why = kernels.unsupported(name)
    if why is not None:
        pytest.skip(why)
    assert kernels.load(name), kernels.reason(name)
    if name == "avx512":
        want = request.param.endswith("-amx")
        if kernels.set_amx(want) != want:
            pytest.skip("this CPU has no AMX-BF16, or Linux refused this process the tile state")
        yield name
        kernels.set_amx(True)
    else:
        yield name


def _quantized_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tile8.h's activation format computed by torch: int8 per block of 32, the block scales, the blocks' sums."""
    rows, k = x.shape
    blocks = x.reshape(rows, k // 32, 32)
    d = blocks.abs().amax(-1) / 127
    x8 = torch.where(d[..., None] > 0, torch.round(blocks / d.clamp_min(1e-30)[..., None]), 0).clamp(-127, 127)
    return x8, d, d * x8.sum(-1)


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 40])
@pytest.mark.parametrize(("out", "group"), [(96, 32), (37, 32), (64, 64), (5, 128), (48, 32)])
def test_q4_linear_is_the_matmul_with_its_dequantized_weight(rows: int, out: int, group: int, path: str) -> None:
    torch.manual_seed(rows * 1000 + out)
    k = 256
    q = AffineInt4.from_float(torch.randn(out, k) * 0.1, group)
    w = q.dequantize()
    x = torch.randn(rows, k)
    lane16 = kernels.layout(path) == "lane16"
    got = kernels.ops(path).q4_linear(x, *(q.q4_tiles() if lane16 else q.tile8()), out)
    # The weights with fp16 scales (exact for a GGUF's); summed in fp32.
    w16 = AffineInt4(q.codes, q.scale.half().float(), q.minimum, q.group_size)
    if lane16:  # bf16 activations
        want = _bf16(x) @ w16.dequantize().T
    else:  # int8 activations per block of 32: scale * dx * sum(code * x8) + min * sum(x)
        x8, d, sums = _quantized_rows(x)
        rep = group // 32
        scale, minimum = w16.scale.repeat_interleave(rep, 1), w16.minimum.float().repeat_interleave(rep, 1)
        dots = torch.einsum("mbi,nbi->mnb", x8, q.codes.float().reshape(out, k // 32, 32))
        want = (dots * d[:, None, :] * scale[None]).sum(-1) + sums @ minimum.T
    assert got.dtype == torch.float32
    assert got.shape == (rows, out)
    assert torch.allclose(got, want, atol=2e-3, rtol=2e-3)
    assert torch.allclose(got, x @ w.T, atol=0.05 * float((x @ w.T).abs().max()))


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 12, 16, 17, 35])
@pytest.mark.parametrize("out", [70, 48])
def test_i8_linear_is_the_matmul_with_its_dequantized_weight(rows: int, out: int, path: str) -> None:
    torch.manual_seed(rows)
    lin = Int8Linear.from_float(torch.randn(out, 192), kernel=path)
    x = torch.randn(rows, 192)
    got = kernels.ops(path).i8_linear(x, lin.weight, lin.scales)
    relayout = Int8Linear.lane_layout if kernels.layout(path) == "lane16" else Int8Linear.tile8_layout
    assert torch.equal(relayout(lin.codes()), lin.weight)
    if kernels.layout(path) == "lane16":
        want = _bf16(x) @ lin.dequantize().T
    else:
        x8, d, _ = _quantized_rows(x)
        dots = torch.einsum("mbi,nbi->mnb", x8, lin.codes().float().reshape(out, 6, 32))
        want = (dots * d[:, None, :]).sum(-1) * lin.scales
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)
    assert torch.allclose(got, x @ lin.dequantize().T, atol=0.02 * float((x @ lin.dequantize().T).abs().max()))


def test_quantized_layers_agree_between_enigma_and_torch_kernels(isa: str) -> None:
    torch.manual_seed(0)
    weight, bias, x = torch.randn(48, 96) * 0.2, torch.randn(48), torch.randn(2, 3, 96)
    q = AffineInt4.from_float(weight, 32)
    a, b = Int4Linear(q, bias, kernel=isa), Int4Linear(q, bias, kernel="torch")
    assert (a.kernel, b.kernel) == (isa, "torch")
    assert f"({isa})" in repr(a)
    # Both against the float product with the same quantized weights: PyTorch's and avx512's round the
    # activations to bf16 (0.25 % of the output's norm here), the tile8 sets to int8 per block of 32 (0.5 %).
    exact = x @ q.dequantize().T + bias
    assert _relative_error(b(x), exact) < 0.005
    assert _relative_error(a(x), exact) < (0.005 if kernels.layout(isa) == "lane16" else 0.01)
    assert torch.allclose(a.dequantize(), b.dequantize(), atol=2e-2)
    c, d = Int8Linear.from_float(weight, bias, kernel=isa), Int8Linear.from_float(weight, bias, kernel="torch")
    exact = x @ c.dequantize().T + bias
    assert _relative_error(d(x), exact) < 0.005
    assert _relative_error(c(x), exact) < 0.01


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize(("d", "heads", "kv_heads"), [(64, 9, 3), (128, 8, 2), (64, 4, 4)])
@pytest.mark.parametrize("length", [1, 5, 16, 17, 161])
def test_decode_attention_equals_sdpa_on_ragged_rows_and_gqa(
    d: int, heads: int, kv_heads: int, length: int, isa: str
) -> None:
    torch.manual_seed(length)
    rows, slot, seq = 3, 2, 200
    kc, vc = torch.randn(6, kv_heads, seq, d), torch.randn(6, kv_heads, seq, d)
    q = torch.randn(rows, heads, d) * 3  # peaked softmaxes too
    pos = torch.tensor([length - 1, max(0, length - 3), length // 2])
    got = kernels.ops(isa).decode_attention(q, kc, vc, slot, pos, 1 / math.sqrt(d))
    for b in range(rows):
        n = int(pos[b]) + 1
        k = kc[slot + b, :, :n].repeat_interleave(heads // kv_heads, 0)
        v = vc[slot + b, :, :n].repeat_interleave(heads // kv_heads, 0)
        want = F.scaled_dot_product_attention(q[b][:, None], k, v)[:, 0]
        assert torch.allclose(got[b], want, atol=1e-5), b


def _attn(isa: str, rows: int, heads: int, kv_heads: int, seq: int, pos: torch.Tensor, slot: int = 0, d: int = 64):
    caches = [torch.randn(rows, kv_heads, seq, d) for _ in range(2)]
    return kernels.ops(isa).decode_attention(torch.randn(rows, heads, d), *caches, slot, pos, 1.0)


def _i8(isa: str, x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return kernels.ops(isa).i8_linear(x, w, scales)


def _q4(isa: str, x: torch.Tensor, out: int, **parts: torch.Tensor) -> torch.Tensor:
    """q4_linear on a valid (20 × 64) weight in the set's layout, with any of its parts replaced."""
    q = AffineInt4.from_float(torch.randn(20, 64), 32)
    codes, scales, offsets = q.q4_tiles() if kernels.layout(isa) == "lane16" else q.tile8()
    parts = {"codes": codes, "scales": scales, "offsets": offsets, **parts}
    return kernels.ops(isa).q4_linear(x, parts["codes"], parts["scales"], parts["offsets"], out)


# Each case: the call, given the set and its tile width, and the message (lane16 / tile8 where they differ).
BAD_ARGUMENTS = {
    "short x": (lambda i, t: _q4(i, torch.randn(2, 32), 20), "x must be \\(rows, 64\\)"),
    "int x": (lambda i, t: _q4(i, torch.randn(2, 64).long(), 20), "float32 or bfloat16"),
    "too many outputs": (
        lambda i, t: _q4(i, torch.randn(2, 64), 20 + 2 * t),
        {"lane16": "out_features 52 does not fit 2 tiles of 16", "tile8": "out_features 36 does not fit 3 tiles of 8"},
    ),
    "bad codes": (
        lambda i, t: _q4(i, torch.randn(2, 64), 20, codes=torch.zeros(2, 2, 8, 31, dtype=torch.uint8)),
        "codes must be",
    ),
    "float scales": (
        lambda i, t: _q4(i, torch.randn(2, 64), 20, scales=torch.zeros(-(-20 // t), 2, t)),
        "scales must be",
    ),
    "short offsets": (
        lambda i, t: _q4(i, torch.randn(2, 64), 20, offsets=torch.zeros(-(-20 // t), 2, t - 1)),
        {"lane16": "offsets must be", "tile8": "mins must be"},
    ),
    "i8 scales": (
        lambda i, t: _i8(i, torch.randn(2, 64), torch.zeros(2, 2 * t, 32, dtype=torch.int8), torch.ones(2 * t + 1)),
        {"lane16": "2 tiles of 16", "tile8": "2 tiles of 8"},
    ),
    "float w": (
        lambda i, t: _i8(i, torch.randn(2, 64), torch.zeros(2, 32, 32), torch.ones(20)),
        "w must be contiguous int8",
    ),
    "k not 32s": (
        lambda i, t: _i8(i, torch.randn(2, 64), torch.zeros(2, t // 2, 32, dtype=torch.int8), torch.ones(2 * t)),
        "multiple of 32",
    ),
    "position": (lambda i, t: _attn(i, 1, 2, 1, 8, torch.tensor([8])), "position 8 out of the cache"),
    "rows": (lambda i, t: _attn(i, 2, 2, 1, 8, torch.tensor([1, 1]), slot=1), "rows out of the cache"),
    "gqa": (lambda i, t: _attn(i, 1, 3, 2, 8, torch.tensor([1])), "multiple of kv heads"),
    "head dim": (
        lambda i, t: _attn(i, 1, 2, 1, 8, torch.tensor([1]), d=40),
        {
            "lane16": "head dim must match the cache's and be 64 or 128, got 40",
            "tile8": "head dim must match the cache's and be a multiple of 16, got 40",
        },
    ),
    "float pos": (lambda i, t: _attn(i, 1, 2, 1, 8, torch.tensor([1.0])), "pos must be int64"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_kernel_arguments_are_refused_with_a_message(case: str, isa: str) -> None:
    call, message = BAD_ARGUMENTS[case]
    layout = kernels.layout(isa)
    if isinstance(message, dict):
        message = message[layout]
    with pytest.raises(RuntimeError, match=message):
        call(isa, 16 if layout == "lane16" else 8)


def test_unknown_kernel_name_is_refused() -> None:
    with pytest.raises(UnsupportedQuantization, match="unknown kernel 'cuda'"):
        Int8Linear.from_float(torch.randn(4, 32), kernel="cuda")
    with pytest.raises(UnsupportedQuantization, match="unknown kernel 'fast'"):
        prepare_for_inference(Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2)), kernel="fast")


def _tiny() -> Transformer:
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=128, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=256, max_seq_len=64)
    return Transformer(cfg).eval()


def test_model_with_enigma_kernels_matches_torch_kernels_through_the_cache(path: str) -> None:
    a, b = _tiny(), _tiny()
    report = prepare_for_inference(a, "int4", kernel=path)
    assert report["kernel"] == path
    if path == "avx512":
        assert report["amx"] == kernels.amx()
    assert prepare_for_inference(b, "int4", kernel="torch")["kernel"] == "torch"
    tokens = torch.randint(0, 128, (2, 9))
    outs = []
    with torch.inference_mode():
        for m in (a, b):
            m.setup_cache(2, 32)
            m(tokens[:, :8], torch.arange(8).expand(2, 8))
            # Ragged rows: the second row decodes at an earlier position than the first.
            pos = torch.tensor([[8], [5]])
            outs.append(m(tokens[:, 8:], pos, last_only=True)[:, -1])
    cos = F.cosine_similarity(outs[0], outs[1], dim=-1)
    assert bool((cos > 0.999).all()), cos
    assert isinstance(a.layers[0].attention.attend, KernelDecode)  # the decode step above ran on the kernel
    assert b.layers[0].attention.attend is SDPA


@pytest.mark.slow
def test_compiled_step_on_enigma_kernels_matches_eager_at_every_row_count(isa: str) -> None:
    """The compiled step (guard checks skipped while serving) still picks the right graph as the row count
    changes, and after the cache is reallocated it runs eagerly."""
    from engine.compile import compile_decode

    model = _tiny()
    prepare_for_inference(model, "int4", kernel=isa)
    model.setup_cache(4, 32)
    step, report = compile_decode(model, "on", batch_sizes=(1, 2))
    assert report["compiled"] is True
    assert step is not None
    torch.manual_seed(5)
    with torch.inference_mode():
        model(torch.randint(0, 128, (4, 6)), torch.arange(6).expand(4, 6))
        for rows in (1, 3, 1, 4, 2, 1):
            tokens, pos = torch.randint(0, 128, (rows, 1)), torch.full((rows, 1), 6)
            got = step(tokens, pos, 0, 7, True)
            want = model(tokens, pos, last_only=True)
            assert got.shape == want.shape
            assert bool((F.cosine_similarity(got[:, -1], want[:, -1], dim=-1) > 0.999).all()), rows
        # What the warm-up did not cover runs eager, not into a recompile: another cache row, position 0.
        for slot, position in ((2, 6), (0, 0)):
            tokens, pos = torch.tensor([[9]]), torch.tensor([[position]])
            got = step(tokens, pos, slot, position + 1, True)
            assert torch.equal(got, model(tokens, pos, slot=slot, last_only=True))
        model.setup_cache(2, 16)
        model(torch.randint(0, 128, (1, 6)), torch.arange(6)[None])
        tokens, pos = torch.tensor([[9]]), torch.tensor([[6]])
        assert torch.equal(step(tokens, pos, 0, 7, True), model(tokens, pos, last_only=True))


def test_head_dims_the_attention_kernel_lacks_keep_sdpa(isa: str) -> None:
    model = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=8))  # head dim 8
    assert prepare_for_inference(model, "int4", kernel=isa)["kernel"] == isa
    model.setup_cache(1, 16)
    assert model.layers[0].attention.attend is SDPA


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=240, check=False
    )


PREPARE = (
    "from engine import kernels\n"
    "from engine.model import ModelConfig, Transformer\n"
    "from engine.quant import prepare_for_inference\n"
    "m = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2))\n"
    "r = prepare_for_inference(m, 'int4')\n"
)


def test_disabled_kernels_fall_back_to_torch_and_refuse_a_demand() -> None:
    code = PREPARE + "print(r['kernel'])\nprepare_for_inference(m, 'int4', kernel='enigma')\n"
    done = _run(code, ENIGMA_KERNELS="off")
    assert done.stdout.strip() == "torch"
    assert "the enigma kernels are unavailable: disabled by ENIGMA_KERNELS" in done.stderr


@pytest.mark.parametrize("name", kernels.ISAS)
def test_environment_forces_a_kernel_set_where_the_cpu_runs_it(name: str) -> None:
    """ENIGMA_KERNELS=<set> makes that set the engine's where the CPU runs it (a developer forcing the fallback
    on a bigger CPU); elsewhere PyTorch's kernels serve and the reason names what the CPU lacks."""
    done = _run(PREPARE + "print(r['kernel'] + '|' + kernels.reason())\n", ENIGMA_KERNELS=name)
    kernel, why = done.stdout.strip().split("|")
    if kernels.unsupported(name) is None:
        assert (kernel, why) == (name, ""), done.stderr
    else:
        assert kernel == "torch", done.stderr
        assert why == kernels.unsupported(name)


def test_an_unknown_kernel_set_in_the_environment_is_named() -> None:
    done = _run(PREPARE + "print(r['kernel'])\nprint(kernels.reason())\n", ENIGMA_KERNELS="sse9")
    assert done.stdout.strip().splitlines() == [
        "torch",
        f"ENIGMA_KERNELS='sse9' names no kernel set; choose off, auto or {', '.join(kernels.ISAS)}",
    ]


def test_amx_is_switched_off_by_the_environment() -> None:
    if kernels.unsupported("avx512") is not None:
        pytest.skip(str(kernels.unsupported("avx512")))
    code = PREPARE + "print(r['kernel'], r['amx'], kernels.set_amx(True))\n"
    off = _run(code, ENIGMA_AMX="off", ENIGMA_KERNELS="avx512")
    assert off.stdout.split()[:2] == ["avx512", "False"], off.stderr
    # Switched back on, it is on exactly where the CPU has it: as in the environment's default.
    on = _run(code, ENIGMA_KERNELS="avx512")
    assert on.stdout.split()[1] == off.stdout.split()[2], on.stderr


def test_a_failed_build_leaves_torch_kernels_and_says_why(tmp_path: Path) -> None:
    name = kernels.choose()
    if name is None:
        pytest.skip(kernels.reason())
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    code = (
        "import dataclasses\n"
        "from pathlib import Path\n"
        "from engine import kernels\n"
        f"kernels.SETS[{name!r}] = dataclasses.replace(kernels.SETS[{name!r}], sources=({str(bad)!r},))\n"
        f"print(kernels.load(build_root=Path({str(tmp_path / 'build')!r})))\n"
        "print(kernels.reason())\n"
    )
    done = _run(code)
    out = done.stdout.strip().splitlines()
    assert out[0] == "False", done.stderr
    assert out[1].startswith("build failed: "), out
    # Under the root it was given, per torch version: the daemon's cache directory, never a path of its own.
    assert [p.name for p in (tmp_path / "build").glob("torch-*/*")] == [name]


def test_a_build_lock_left_by_a_killed_build_does_not_hang_the_next_load(tmp_path: Path) -> None:
    """torch waits forever on its ``lock`` file; one left by a build that was killed must be cleared."""
    name = kernels.choose()
    if name is None:
        pytest.skip(kernels.reason())
    tiny = tmp_path / "tiny.cpp"
    tiny.write_text("int enigma_tiny() { return 1; }\n")  # a set of one trivial file: builds in seconds
    code = (
        "import dataclasses\n"
        "from pathlib import Path\n"
        "from engine import kernels\n"
        "kernels._register_fakes = lambda ns: None\n"  # the trivial set defines no ops to give shapes to
        f"kernels.SETS[{name!r}] = dataclasses.replace(kernels.SETS[{name!r}], sources=({str(tiny)!r},))\n"
        f"print(kernels.load(build_root=Path({str(tmp_path / 'build')!r})), kernels.reason())\n"
    )
    assert _run(code).stdout.split() == ["True"]
    (stale,) = (tmp_path / "build").glob(f"torch-*/{name}")
    (stale / "lock").touch()  # what a build killed while holding torch's lock leaves
    done = _run(code)
    assert done.stdout.split() == ["True"], done.stderr
    assert "removing a stale build lock left by a build that was stopped" in done.stderr
    assert not (stale / "lock").exists()


AVX512 = "avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_bf16"


@pytest.mark.parametrize(
    ("machine", "flags", "chosen"),
    [
        ("x86_64", f"{AVX512} avx512_vnni avx_vnni amx_tile amx_bf16", "avx512"),
        ("x86_64", f"{AVX512} avx512_vnni avx_vnni", "avx512-vnni"),  # no AMX: the int8 sets are faster
        ("x86_64", AVX512, "avx2"),
        ("x86_64", "avx2 fma f16c avx_vnni", "avx-vnni"),
        ("x86_64", "avx2 fma f16c", "avx2"),
        ("x86_64", "avx fma", None),
        ("aarch64", "fp asimd asimddp", "neon-dot"),
        ("aarch64", "fp asimd", "neon"),
    ],
)
def test_auto_picks_the_set_that_measured_fastest_for_the_cpu(
    monkeypatch: pytest.MonkeyPatch, machine: str, flags: str, chosen: str | None
) -> None:
    monkeypatch.setattr(kernels, "cpu_flags", lambda: set(flags.split()))
    monkeypatch.setattr(kernels, "_machine", lambda: machine)
    monkeypatch.delenv("ENIGMA_KERNELS", raising=False)
    assert kernels.choose() == chosen
