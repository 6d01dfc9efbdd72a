"""Weight-only quantization: kernels agree with their dequantized weights, model logits stay close to float,
GGUF Q4 blocks load exactly, fused projections change nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.generate import generate
from engine.model import FUSED, projection_rows
from engine.quant import (
    AffineInt4,
    Int4Linear,
    Int8Linear,
    UnsupportedQuantization,
    logits_error,
    prepare_for_inference,
    quantize_model,
)
from engine.quant_gguf import q4_blocks, quantize_from_gguf
from engine.sampling import SamplingParams
from tests.engine.speed_helpers import byte_tokenizer, tiny_model

torch.manual_seed(0)
W = torch.randn(96, 128) * 0.05
X = torch.randn(5, 128)


def tiny(**kw):
    m = tiny_model(max_batch=2, max_seq=128, **kw)
    m.drop_cache()
    return m


def prompt() -> torch.Tensor:
    return torch.tensor([byte_tokenizer().encode("The quick brown fox jumps over the lazy dog. hello world")])


def test_int8_linear_matches_its_dequantized_weight() -> None:
    lin = Int8Linear.from_float(W)
    ref = X @ lin.dequantize().T
    assert torch.allclose(lin(X), ref, atol=0.02, rtol=0.02)  # bf16 activations
    step = lin.scales.float()[:, None]
    assert ((lin.dequantize() - W).abs() <= step / 2 + 1e-7).all()


@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_linear_matches_its_dequantized_weight(group: int) -> None:
    q = AffineInt4.from_float(W, group)
    lin = Int4Linear(q)
    step = q.scale.max().item()
    assert (q.dequantize() - W).abs().max() <= step / 2 + 1e-6
    assert torch.allclose(lin.dequantize(), q.dequantize(), atol=step / 16 + 1e-3)  # only bf16 scale rounding
    assert torch.allclose(lin(X), X @ q.dequantize().T, atol=0.03, rtol=0.02)


def test_smaller_groups_give_smaller_weight_error() -> None:
    errs = [(AffineInt4.from_float(W, g).dequantize() - W).abs().mean().item() for g in (32, 64, 128)]
    assert errs[0] < errs[1] < errs[2]


def test_quantized_linear_keeps_leading_dims_dtype_and_bias() -> None:
    bias = torch.randn(96)
    lin = Int4Linear.from_float(W, 32, bias)
    x = torch.randn(2, 3, 128)
    y = lin(x)
    assert y.shape == (2, 3, 96)
    assert y.dtype == torch.float32
    assert torch.allclose(y, x @ lin.dequantize().T + bias, atol=0.03, rtol=0.02)


def test_a_state_dict_in_separate_projections_loads_into_the_fused_ones() -> None:
    model, other = tiny(), tiny(seed=9)
    state = model.state_dict()
    rows = projection_rows(model.config)
    for i in range(model.config.n_layers):
        for fused, parts in FUSED.items():
            whole = state.pop(f"layers.{i}.{fused}.weight")
            for part, w in zip(parts, whole.split([rows[p] for p in parts]), strict=True):
                state[f"layers.{i}.{part}.weight"] = w
    assert "layers.0.attention.wk.weight" in state
    other.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(other(prompt()), model(prompt()))


# int8: 0.05 with bf16 activations (PyTorch's kernels, avx512); the tile8 sets (avx2, neon) also quantize the
# activations to int8 per block of 32, measured 0.055 here.
@pytest.mark.parametrize(("mode", "max_abs", "min_cos"), [("int8", 0.08, 0.9999), ("int4", 0.6, 0.99)])
def test_quantized_model_logits_stay_close_to_float(mode: str, max_abs: float, min_cos: float) -> None:
    model = tiny()
    with torch.inference_mode():
        ref = model(prompt())
        quantize_model(model, mode, group_size=32)
        err = logits_error(ref, model(prompt()))
    print(f"{mode}: {err}")
    assert err["max_abs"] < max_abs
    assert err["cosine"] > min_cos


def test_quantized_model_generates_through_the_cache() -> None:
    model, tok = tiny(), byte_tokenizer().with_stop_ids(set())
    quantize_model(model, "int4")
    model.setup_cache(1, 128)
    events = list(generate(model, tok, tok.encode("hello world"), SamplingParams(temperature=0.0, max_tokens=12)))
    assert events[-1].completion_tokens == 12


def test_int4_group_falls_back_to_a_divisor_of_the_width() -> None:
    model = tiny()  # dim 64: no group of 128 fits
    quantize_model(model, "int4", group_size=128)
    assert model.layers[0].attention.wqkv.group_size == 64


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "int3"}, "unknown quantization mode 'int3'"),
        ({"mode": "int4", "group_size": 48}, "group_size must be one of"),
        ({"mode": "int4", "head": "fp8"}, "unknown head mode 'fp8'"),
    ],
)
def test_bad_quantization_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(UnsupportedQuantization, match=message) as info:
        quantize_model(tiny(), **kwargs)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_gguf_q4_blocks_decode_exactly_like_gguf(kind: str) -> None:
    import gguf

    qt = getattr(gguf.GGMLQuantizationType, kind)
    raw = gguf.quants.quantize(np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32), qt)
    ref = gguf.quants.dequantize(raw, qt)
    assert np.array_equal(q4_blocks(raw, kind).dequantize().numpy(), ref)


def test_gguf_q4_blocks_refuse_other_block_types() -> None:
    with pytest.raises(ValueError, match="unpacks Q4_0 and Q4_1, not Q8_0"):
        q4_blocks(np.zeros((2, 34), dtype=np.uint8), "Q8_0")


@pytest.mark.model
def test_smollm2_gguf_q4_loads_straight_into_int4(smollm2_path) -> None:
    from engine.loader import load_model

    lm = load_model(smollm2_path, max_seq_len=256)
    ids = torch.tensor([lm.tokenizer.encode("The capital of France is Paris. The capital of Italy is")])
    model = copy.deepcopy(lm.model)
    report = quantize_from_gguf(model, smollm2_path)
    attn = lm.model.layers[3].attention
    w = attn.wqkv.weight
    with torch.inference_mode():
        err = logits_error(lm.model(ids), model(ids))
    print(f"gguf Q4_1 → int4: {err}")
    assert report == {"gguf_q4": 4 * 30, "requantized": 0}
    # The codes are the file's; at most the scale/zero are rounded to bf16 (PyTorch's kernel; enigma's keeps fp16).
    assert torch.allclose(model.layers[3].attention.wqkv.dequantize(), w, atol=w.abs().max().item() / 256)
    assert err["cosine"] > 0.995
    assert err["argmax_agree"] == 1.0


@pytest.mark.parametrize("fallback", ["int4", "int8"])
def test_a_float_gguf_is_requantized_from_the_float_weights(tiny_ggufs, fallback: str) -> None:
    from engine.loader import load_model

    path = tiny_ggufs("llama")
    lm = load_model(path, max_seq_len=64)
    ids = torch.tensor([lm.tokenizer.encode("The quick brown fox jumps over the lazy dog")])
    model = copy.deepcopy(lm.model)
    report = quantize_from_gguf(model, path, fallback=fallback, kernel="torch")
    assert report == {"gguf_q4": 0, "requantized": 4 * lm.config.n_layers}
    kind = Int4Linear if fallback == "int4" else Int8Linear
    assert isinstance(model.layers[0].attention.wqkv, kind)
    assert isinstance(model.layers[0].feed_forward.w13, kind)
    assert isinstance(model.output, Int8Linear)  # the head follows ``head``, int8 by default
    # The same projections as quantizing the float model directly: requantized from its float weights.
    direct = quantize_model(copy.deepcopy(lm.model), fallback, group_size=32, kernel="torch")
    with torch.inference_mode():
        assert torch.equal(model(ids), direct(ids))


def test_prepare_for_inference_float_keeps_the_float_weights() -> None:
    model = tiny()
    assert prepare_for_inference(model, "float", kernel="torch") == {"mode": "float", "kernel": "torch"}
    assert isinstance(model.layers[0].attention.wqkv, torch.nn.Linear)


def test_prepare_for_inference_auto_without_gguf_is_int4() -> None:
    model = tiny()
    assert prepare_for_inference(model)["mode"] == "int4"
    assert isinstance(model.layers[0].feed_forward.w13, Int4Linear)
    assert isinstance(model.output, Int8Linear)


def test_prepare_for_inference_rejects_unknown_mode() -> None:
    with pytest.raises(UnsupportedQuantization, match="unknown inference mode 'fast'"):
        prepare_for_inference(tiny(), "fast")
