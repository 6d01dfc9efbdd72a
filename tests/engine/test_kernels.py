"""enigma's own CPU kernels (engine/kernels): the batched Q4/int8 matmuls and decode attention compute what the
reference computations do, reject bad arguments with a clear message, and the engine falls back to PyTorch's
kernels where they cannot be built."""

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
from engine.model import ModelConfig, Transformer
from engine.quant import AffineInt4, Int4Linear, Int8Linear, UnsupportedQuantization, prepare_for_inference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _kernels() -> None:
    assert kernels.unsupported() is None, f"this machine is expected to run the kernels: {kernels.unsupported()}"
    assert kernels.load(), kernels.reason()


@pytest.fixture(params=["vector", "amx"])
def path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both implementations of the matmuls: AVX-512 dot products, and AMX tiles for two rows and more."""
    want = request.param == "amx"
    if kernels.set_amx(want) != want:
        pytest.skip("this CPU has no AMX-BF16, or Linux refused this process the tile state")
    yield request.param
    kernels.set_amx(True)


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
    got = torch.ops.enigma.q4_linear(x, *q.q4_tiles(), out)
    # bf16 activations against the weights with fp16 scales (exact for a GGUF's), summed in fp32.
    w16 = AffineInt4(q.codes, q.scale.half().float(), q.minimum, q.group_size).dequantize()
    want = _bf16(x) @ w16.T
    assert got.dtype == torch.float32
    assert got.shape == (rows, out)
    assert torch.allclose(got, want, atol=2e-3, rtol=2e-3)
    assert torch.allclose(got, x @ w.T, atol=0.05 * float((x @ w.T).abs().max()))


@pytest.mark.parametrize("rows", [1, 2, 4, 8, 12, 16, 17, 35])
@pytest.mark.parametrize("out", [70, 48])
def test_i8_linear_is_the_matmul_with_its_dequantized_weight(rows: int, out: int, path: str) -> None:
    torch.manual_seed(rows)
    lin = Int8Linear.from_float(torch.randn(out, 192), kernel="enigma")
    x = torch.randn(rows, 192)
    got = torch.ops.enigma.i8_linear(x, lin.weight, lin.scales)
    assert torch.equal(Int8Linear.lane_layout(lin.codes()), lin.weight)
    want = _bf16(x) @ lin.dequantize().T
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


def test_quantized_layers_agree_between_enigma_and_torch_kernels() -> None:
    torch.manual_seed(0)
    weight, bias, x = torch.randn(48, 96) * 0.2, torch.randn(48), torch.randn(2, 3, 96)
    q = AffineInt4.from_float(weight, 32)
    a, b = Int4Linear(q, bias, kernel="enigma"), Int4Linear(q, bias, kernel="torch")
    assert (a.kernel, b.kernel) == ("enigma", "torch")
    assert "(enigma)" in repr(a)
    assert torch.allclose(a(x), b(x), atol=0.03, rtol=0.02)
    assert torch.allclose(a.dequantize(), b.dequantize(), atol=2e-2)
    c, d = Int8Linear.from_float(weight, bias, kernel="enigma"), Int8Linear.from_float(weight, bias, kernel="torch")
    assert torch.allclose(c(x), d(x), atol=0.03, rtol=0.02)


@pytest.mark.parametrize(("d", "heads", "kv_heads"), [(64, 9, 3), (128, 8, 2), (64, 4, 4)])
@pytest.mark.parametrize("length", [1, 5, 16, 17, 161])
def test_decode_attention_equals_sdpa_on_ragged_rows_and_gqa(d: int, heads: int, kv_heads: int, length: int) -> None:
    torch.manual_seed(length)
    rows, slot, seq = 3, 2, 200
    kc, vc = torch.randn(6, kv_heads, seq, d), torch.randn(6, kv_heads, seq, d)
    q = torch.randn(rows, heads, d) * 3  # peaked softmaxes too
    pos = torch.tensor([length - 1, max(0, length - 3), length // 2])
    got = torch.ops.enigma.decode_attention(q, kc, vc, slot, pos, 1 / math.sqrt(d))
    for b in range(rows):
        n = int(pos[b]) + 1
        k = kc[slot + b, :, :n].repeat_interleave(heads // kv_heads, 0)
        v = vc[slot + b, :, :n].repeat_interleave(heads // kv_heads, 0)
        want = F.scaled_dot_product_attention(q[b][:, None], k, v)[:, 0]
        assert torch.allclose(got[b], want, atol=1e-5), b


def _attn(rows: int, heads: int, kv_heads: int, seq: int, pos: torch.Tensor, slot: int = 0, d: int = 64):
    caches = [torch.randn(rows, kv_heads, seq, d) for _ in range(2)]
    return torch.ops.enigma.decode_attention(torch.randn(rows, heads, d), *caches, slot, pos, 1.0)


def _i8(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return torch.ops.enigma.i8_linear(x, w, scales)


def _q4(x: torch.Tensor, out: int, **parts: torch.Tensor) -> torch.Tensor:
    """q4_linear on a valid (20 × 64) weight, with any of its parts replaced."""
    codes, scales, offsets = AffineInt4.from_float(torch.randn(20, 64), 32).q4_tiles()
    parts = {"codes": codes, "scales": scales, "offsets": offsets, **parts}
    return torch.ops.enigma.q4_linear(x, parts["codes"], parts["scales"], parts["offsets"], out)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _q4(torch.randn(2, 32), 20), "x must be \\(rows, 64\\)"),
        (lambda: _q4(torch.randn(2, 64).long(), 20), "float32 or bfloat16"),
        (lambda: _q4(torch.randn(2, 64), 40), "out_features 40 does not fit 2 tiles of 16"),
        (lambda: _q4(torch.randn(2, 64), 20, codes=torch.zeros(2, 2, 8, 31, dtype=torch.uint8)), "codes must be"),
        (lambda: _q4(torch.randn(2, 64), 20, scales=torch.zeros(2, 2, 16)), "scales must be"),
        (lambda: _q4(torch.randn(2, 64), 20, offsets=torch.zeros(2, 2, 15)), "offsets must be"),
        (lambda: _i8(torch.randn(2, 64), torch.zeros(2, 32, 32, dtype=torch.int8), torch.ones(33)), "2 tiles of 16"),
        (lambda: _i8(torch.randn(2, 64), torch.zeros(2, 32, 32), torch.ones(20)), "w must be contiguous int8"),
        (lambda: _i8(torch.randn(2, 64), torch.zeros(2, 8, 32, dtype=torch.int8), torch.ones(20)), "multiple of 32"),
        (lambda: _attn(1, 2, 1, 8, torch.tensor([8])), "position 8 out of the cache"),
        (lambda: _attn(2, 2, 1, 8, torch.tensor([1, 1]), slot=1), "rows out of the cache"),
        (lambda: _attn(1, 3, 2, 8, torch.tensor([1])), "multiple of kv heads"),
        (
            lambda: _attn(1, 2, 1, 8, torch.tensor([1]), d=32),
            "head dim must match the cache's and be 64 or 128, got 32",
        ),
        (lambda: _attn(1, 2, 1, 8, torch.tensor([1.0])), "pos must be int64"),
    ],
)
def test_bad_kernel_arguments_are_refused_with_a_message(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call()


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
    report = prepare_for_inference(a, "int4", kernel="enigma")
    assert (report["kernel"], report["amx"]) == ("enigma", path == "amx")
    assert prepare_for_inference(b, "int4", kernel="torch")["kernel"] == "torch"
    assert a.layers[0].attention.decode_kernel
    assert not b.layers[0].attention.decode_kernel
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


@pytest.mark.slow
def test_compiled_step_on_enigma_kernels_matches_eager_at_every_row_count() -> None:
    """The compiled step (guard checks skipped while serving) still picks the right graph as the row count
    changes, and reallocating the cache drops it."""
    from engine.compile import compile_decode

    model = _tiny()
    prepare_for_inference(model, "int4", kernel="enigma")
    model.setup_cache(4, 32)
    assert compile_decode(model, "on", batch_sizes=(1, 2))["compiled"] is True
    step = model.compiled_decode
    torch.manual_seed(5)
    with torch.inference_mode():
        model(torch.randint(0, 128, (4, 6)), torch.arange(6).expand(4, 6))
        for rows in (1, 3, 1, 4, 2, 1):
            tokens, pos = torch.randint(0, 128, (rows, 1)), torch.full((rows, 1), 6)
            got = model(tokens, pos, last_only=True)
            model.compiled_decode = None
            want = model(tokens, pos, last_only=True)
            model.compiled_decode = step
            assert got.shape == want.shape
            assert bool((F.cosine_similarity(got[:, -1], want[:, -1], dim=-1) > 0.999).all()), rows
        # What the warm-up did not cover runs eager, not into a recompile: another cache row, position 0.
        for slot, position in ((2, 6), (0, 0)):
            got = model(torch.tensor([[9]]), torch.tensor([[position]]), slot=slot, last_only=True)
            assert got.shape == (1, 1, 128)
            assert torch.isfinite(got).all()
    model.setup_cache(2, 16)
    assert model.compiled_decode is None


def test_head_dims_the_attention_kernel_lacks_keep_sdpa() -> None:
    model = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=4))  # head dim 16
    assert prepare_for_inference(model, "int4", kernel="enigma")["kernel"] == "enigma"
    assert not model.layers[0].attention.decode_kernel


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=240, check=False
    )


def test_disabled_kernels_fall_back_to_torch_and_refuse_a_demand() -> None:
    code = (
        "from engine.model import ModelConfig, Transformer\n"
        "from engine.quant import prepare_for_inference\n"
        "m = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2))\n"
        "print(prepare_for_inference(m, 'int4')['kernel'])\n"
        "prepare_for_inference(m, 'int4', kernel='enigma')\n"
    )
    done = _run(code, ENIGMA_KERNELS="off")
    assert done.stdout.strip() == "torch"
    assert "the enigma kernels are unavailable: disabled by ENIGMA_KERNELS" in done.stderr


def test_amx_is_switched_off_by_the_environment() -> None:
    code = (
        "from engine import kernels\n"
        "from engine.model import ModelConfig, Transformer\n"
        "from engine.quant import prepare_for_inference\n"
        "m = Transformer(ModelConfig(vocab_size=64, dim=64, n_layers=1, n_heads=2))\n"
        "r = prepare_for_inference(m, 'int4')\n"
        "print(r['kernel'], r['amx'], kernels.set_amx(True))\n"
    )
    off = _run(code, ENIGMA_AMX="off")
    assert off.stdout.split()[:2] == ["enigma", "False"], off.stderr
    # Switched back on, it is on exactly where the CPU has it: as in the environment's default.
    on = _run(code)
    assert on.stdout.split()[1] == off.stdout.split()[2], on.stderr


def test_a_failed_build_leaves_torch_kernels_and_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    code = (
        "from pathlib import Path\n"
        "from engine import kernels\n"
        f"kernels.SOURCES = (Path({str(bad)!r}),)\n"
        f"print(kernels.load(Path({str(tmp_path / 'build')!r})))\n"
        "print(kernels.reason())\n"
    )
    done = _run(code)
    out = done.stdout.strip().splitlines()
    assert out[0] == "False", done.stderr
    assert out[1].startswith("build failed: "), out
