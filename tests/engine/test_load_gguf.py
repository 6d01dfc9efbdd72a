"""The GGUF loader: tensor types, the Q/K un-permutation, names, config, and every way a file can be wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import (
    EngineError,
    MissingTensor,
    ModelFileError,
    ModelNotFound,
    TokenizerError,
    UnsupportedModel,
    UnsupportedQuantType,
)
from engine.families import LLAMA, permute_qk, unpermute_qk
from engine.gguf_loader import dequantize_tensor, gguf_config, open_gguf
from engine.loader import load_model
from engine.model import ModelConfig, Transformer, join_projections

from .conftest import add_gguf_tokenizer, llamacpp_permute, write_gguf

# fp16 scale fields inside each K-quant block (byte offsets), so random blocks decode to finite numbers.
_K_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}
QUANTIZABLE = ("F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")
# Worst-case absolute error of each format on N(0, 1) data (a block's range / levels, with margin).
QUANT_TOL = {"F16": 2e-3, "BF16": 2e-2, "Q8_0": 0.03, "Q4_0": 0.6, "Q4_1": 0.4, "Q5_0": 0.3, "Q5_1": 0.2}


def _single_tensor_gguf(path, name, data, qtype=None):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _random_k_blocks(kind: str, rows: int, cols: int, seed: int) -> np.ndarray:
    import gguf

    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    for off in _K_SCALE_OFFSETS[kind]:
        raw[:, off : off + 2] = rng.uniform(0.01, 0.1, size=(raw.shape[0], 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, cols // block * size)


@pytest.mark.parametrize("kind", QUANTIZABLE)
def test_quantized_tensor_loads_close_to_the_original(tmp_path, kind):
    import gguf

    x = np.random.default_rng(0).standard_normal((6, 256)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    q = gguf.quants.quantize(x, qtype)
    path = _single_tensor_gguf(tmp_path / "t.gguf", "blk.0.ffn_up.weight", q, None if kind == "F16" else qtype)
    t = open_gguf(path).tensors[0]
    assert t.tensor_type.name == kind
    got = dequantize_tensor(t)
    assert got.dtype == torch.float32
    assert tuple(got.shape) == (6, 256)
    assert (got - torch.from_numpy(x)).abs().max().item() <= QUANT_TOL[kind]


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"])
def test_quantized_tensor_equals_transformers_independent_dequantizer(tmp_path, kind):
    import gguf
    from transformers.integrations.gguf.dequant import dequantize as hf_dequantize

    qtype = gguf.GGMLQuantizationType[kind]
    if kind in _K_SCALE_OFFSETS:
        raw = _random_k_blocks(kind, rows=4, cols=512, seed=len(kind))
    else:
        x = np.random.default_rng(1).standard_normal((4, 512)).astype(np.float32)
        raw = gguf.quants.quantize(x, qtype)
    path = _single_tensor_gguf(tmp_path / "t.gguf", "blk.0.ffn_up.weight", raw, qtype)
    got = dequantize_tensor(open_gguf(path).tensors[0])
    want = hf_dequantize(torch.from_numpy(raw.reshape(-1).copy()), int(qtype)).reshape(4, 512)
    assert tuple(got.shape) == (4, 512)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_float32_tensor_loads_exactly(tmp_path):
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    path = _single_tensor_gguf(tmp_path / "t.gguf", "output_norm.weight", x)
    assert torch.equal(dequantize_tensor(open_gguf(path).tensors[0]), torch.from_numpy(x))


def test_unsupported_quant_type_is_refused_with_its_name(tmp_path):
    import gguf

    raw = np.zeros((2, 256 // 32 * 18), dtype=np.uint8)  # IQ4_NL: 18 bytes per 32 values
    path = _single_tensor_gguf(tmp_path / "t.gguf", "blk.0.ffn_up.weight", raw, gguf.GGMLQuantizationType.IQ4_NL)
    with pytest.raises(UnsupportedQuantType) as err:
        dequantize_tensor(open_gguf(path).tensors[0])
    assert err.value.code == "bad_request"
    assert "IQ4_NL" in err.value.message
    assert "blk.0.ffn_up.weight" in err.value.message


# -- Q/K permutation ----------------------------------------------------------------------------------------------
def test_unpermute_inverts_llamacpp_permute():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    assert np.array_equal(unpermute_qk(llamacpp_permute(w, 8), 8), w)
    assert np.array_equal(permute_qk(w, 8), llamacpp_permute(w, 8))


def test_unpermute_turns_interleaved_rope_pairs_into_rotate_half_halves():
    # One head of 8 rows stored interleaved as (x0, y0, x1, y1, ...): un-permuted it is (x0..x3, y0..y3).
    interleaved = np.array(["x0", "y0", "x1", "y1", "x2", "y2", "x3", "y3"])
    assert unpermute_qk(interleaved, 1).tolist() == ["x0", "x1", "x2", "x3", "y0", "y1", "y2", "y3"]


def test_unpermute_on_quantized_rows_equals_unpermute_after_dequantizing():
    import gguf

    x = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)  # (16, 68) bytes: one row of blocks per row
    a = gguf.quants.dequantize(unpermute_qk(q, 2), gguf.GGMLQuantizationType.Q8_0)
    b = unpermute_qk(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0), 2)
    assert np.array_equal(a, b)


def test_unpermute_works_on_torch_tensors():
    w = torch.arange(32.0).reshape(16, 2)
    assert torch.equal(unpermute_qk(torch.from_numpy(llamacpp_permute(w.numpy(), 2)), 2), w)


# -- names ----------------------------------------------------------------------------------------------------
def test_name_map_covers_every_parameter_of_the_model():
    config = ModelConfig(vocab_size=32, dim=16, n_layers=3, n_heads=2, ffn_dim=32, attn_bias=True)
    with torch.device("meta"):
        ours = {n for n, _ in Transformer(config).named_parameters(remove_duplicate=False)}
    names = [g.replace("{i}", str(i)) for g in LLAMA.gguf_names for i in range(config.n_layers)]
    mapped = {LLAMA.gguf_to_ours(g) for g in names}
    assert len(mapped) == 3 + 15 * 3
    # Separate projections are joined into the model's fused ones as they load.
    state = {name: torch.zeros(1) for name in mapped if name is not None}
    for i in range(config.n_layers):
        join_projections(state, f"layers.{i}.")
    assert ours <= set(state)


def test_gguf_names_map_to_ours_and_unknown_names_to_none():
    assert LLAMA.gguf_to_ours("blk.17.attn_q.weight") == "layers.17.attention.wq.weight"
    assert LLAMA.gguf_to_ours("blk.0.ffn_gate.weight") == "layers.0.feed_forward.w1.weight"
    assert LLAMA.gguf_to_ours("token_embd.weight") == "tok_embeddings.weight"
    assert LLAMA.gguf_to_ours("rope_freqs.weight") is None
    assert LLAMA.gguf_to_ours("blk.0.attn_rot_embd") is None
    assert "blk.{i}.attn_k.bias" in LLAMA.gguf_names


# -- whole models ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["llama_tied", "mistral", "qwen2", "qwen2_untied"])
def test_gguf_model_logits_equal_the_original_checkpoint(tiny_models, tiny_ggufs, variant):
    tiny = tiny_models(variant)
    loaded = load_model(tiny_ggufs(variant))
    ids = torch.randint(0, tiny.vocab_size, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (loaded.model(ids) - tiny.hf(ids).logits).abs().max().item() <= 1e-3


@pytest.mark.parametrize("variant", ["llama_tied", "qwen2"])
def test_transformers_reads_our_test_gguf_as_llamacpp_would(tiny_models, tiny_ggufs, variant):
    """Proves the fixture writes Q/K the way llama.cpp does (permuted for llama, as-is for Qwen2), so the
    un-permutation test above is not circular."""
    from transformers import AutoModelForCausalLM

    path = tiny_ggufs(variant)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tiny = tiny_models(variant)
    ids = torch.randint(0, tiny.vocab_size, (1, 20), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert (ref(ids).logits - tiny.hf(ids).logits).abs().max().item() <= 1e-4


def test_llama3_rope_factors_tensor_is_applied(tiny_models, tmp_path, trained_tokenizer):
    """llama.cpp stores Llama 3.1 RoPE scaling as a ``rope_freqs.weight`` tensor of per-frequency divisors."""
    from engine.model import rope_inv_freq

    tiny = tiny_models("llama")
    cfg = tiny.hf.config
    scaling = {k: v for k, v in cfg.rope_parameters.items() if k not in ("rope_theta", "rope_type")}
    theta, hd = cfg.rope_parameters["rope_theta"], cfg.hidden_size // cfg.num_attention_heads
    plain, _ = rope_inv_freq(hd, theta, None)
    scaled, _ = rope_inv_freq(hd, theta, {"type": "llama3", **scaling})
    factors = (plain.double() / scaled.double()).float().numpy()
    path = write_gguf(tiny, tmp_path / "l31.gguf", trained_tokenizer, extra_tensors={"rope_freqs.weight": factors})
    loaded = load_model(path)
    ids = torch.randint(0, tiny.vocab_size, (1, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (loaded.model(ids) - tiny.hf(ids).logits).abs().max().item() <= 1e-3


def test_config_comes_from_the_metadata(tiny_models, tiny_ggufs):
    tiny = tiny_models("qwen2_untied")
    config = gguf_config(open_gguf(tiny_ggufs("qwen2_untied")))
    assert (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.ffn_dim) == (64, 2, 4, 1, 96)
    assert config.vocab_size == tiny.vocab_size
    assert config.attn_bias
    assert not config.tie_embeddings
    assert config.arch == "qwen2"
    assert config.max_seq_len == 256
    assert config.norm_eps == pytest.approx(1e-6)


def test_mistral_architecture_loads_as_llama(tiny_models, tmp_path, trained_tokenizer):
    tiny = tiny_models("llama_tied")
    path = write_gguf(tiny, tmp_path / "m.gguf", trained_tokenizer, arch="mistral")
    loaded = load_model(path)
    ids = torch.randint(0, tiny.vocab_size, (1, 16), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert (loaded.model(ids) - tiny.hf(ids).logits).abs().max().item() <= 1e-3
    assert loaded.config.arch == "llama"


def test_loaded_meta_names_format_and_quant(tiny_ggufs):
    loaded = load_model(tiny_ggufs("qwen2"))
    assert loaded.meta["format"] == "gguf"
    assert loaded.meta["quant"] == "F32"
    assert loaded.meta["architecture"] == "qwen2"
    assert loaded.meta["params"] == sum(p.numel() for p in loaded.model.parameters())


def test_bfloat16_load_gives_bfloat16_weights(tiny_ggufs):
    loaded = load_model(tiny_ggufs("qwen2"), dtype=torch.bfloat16, max_seq_len=64)
    assert loaded.model.tok_embeddings.weight.dtype == torch.bfloat16
    assert loaded.config.max_seq_len == 64
    assert loaded.model.rope.shape[0] == 64


# -- error paths ---------------------------------------------------------------------------------------------------
def test_missing_file_is_not_found(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        load_model(tmp_path / "nope.gguf")
    assert err.value.code == "not_found"
    assert "nope.gguf" in err.value.message


def test_foreign_file_is_refused_as_not_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, not a model" * 10)
    with pytest.raises(ModelFileError) as err:
        open_gguf(path)
    assert err.value.code == "bad_request"
    assert "not a GGUF file" in err.value.message


@pytest.mark.parametrize("keep", [0.5, 0.999, 24])
def test_truncated_file_is_refused_as_truncated(tiny_ggufs, tmp_path, keep):
    data = tiny_ggufs("qwen2").read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:n])
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert err.value.code == "bad_request"
    assert "truncated" in err.value.message
    assert "cut.gguf" in err.value.message


def test_truncated_real_model_is_refused(smollm2_path, tmp_path):
    """The packaged model cut after its metadata and first tensors, as an interrupted download leaves it."""
    path = tmp_path / "smol-cut.gguf"
    with smollm2_path.open("rb") as src:
        path.write_bytes(src.read(8 * 1024 * 1024))
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert err.value.code == "bad_request"
    assert "truncated" in err.value.message
    assert "smol-cut.gguf" in err.value.message


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModel) as err:
        load_model(tmp_path / "bert.gguf")
    assert err.value.code == "bad_request"
    assert "'bert'" in err.value.message
    assert "llama" in err.value.message


def test_missing_tensor_is_named(tiny_models, tmp_path, trained_tokenizer):
    path = write_gguf(tiny_models("qwen2"), tmp_path / "m.gguf", trained_tokenizer, drop=("blk.1.ffn_down.weight",))
    with pytest.raises(MissingTensor) as err:
        load_model(path)
    assert err.value.code == "bad_request"
    assert "layers.1.feed_forward.w2.weight" in err.value.message


def test_wrong_tensor_shape_is_refused(tiny_models, tmp_path, trained_tokenizer):
    bad = {"blk.0.ffn_norm.weight": np.ones(7, dtype=np.float32)}
    path = write_gguf(
        tiny_models("qwen2"), tmp_path / "s.gguf", trained_tokenizer, drop=("blk.0.ffn_norm.weight",), extra_tensors=bad
    )
    with pytest.raises(MissingTensor) as err:
        load_model(path)
    assert "layers.0.ffn_norm.weight" in err.value.message
    assert "(7,)" in err.value.message


def test_unsupported_tokenizer_model_is_a_tokenizer_error():
    from engine.tokenizer import Tokenizer

    with pytest.raises(TokenizerError) as err:
        Tokenizer.from_gguf_fields({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["[PAD]", "a"]})
    assert err.value.code == "bad_request"
    assert "'bert'" in err.value.message


def test_gguf_without_vocabulary_is_a_tokenizer_error(tiny_models, tmp_path):
    import gguf

    tiny = tiny_models("qwen2")
    cfg = tiny.hf.config
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "qwen2")
    for key, value in (
        ("context_length", 256),
        ("embedding_length", 64),
        ("block_count", 2),
        ("feed_forward_length", 96),
        ("attention.head_count", 4),
    ):
        w.add_uint32(f"qwen2.{key}", value)
    w.add_uint32("qwen2.vocab_size", cfg.vocab_size)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from engine.gguf_loader import read_gguf

    with pytest.raises(TokenizerError) as err:
        read_gguf(tmp_path / "t.gguf")
    assert "no tokenizer vocabulary" in err.value.message


def test_tokenizer_fixture_helper_writes_a_loadable_vocabulary(tmp_path, trained_tokenizer):
    """The GGUF tokenizer written by the fixtures rebuilds to the tokenizer it came from."""
    import gguf

    from engine.gguf_loader import gguf_metadata
    from engine.tokenizer import Tokenizer

    w = gguf.GGUFWriter(str(tmp_path / "tok.gguf"), "llama")
    add_gguf_tokenizer(w, trained_tokenizer)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = Tokenizer.from_gguf_fields(gguf_metadata(open_gguf(tmp_path / "tok.gguf")))
    text = "Hello wörld 😀 <|im_end|> 12345"
    assert tok.encode(text) == trained_tokenizer.encode(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_header_bytes_give_an_engine_error_or_a_model(tiny_ggufs, tmp_path, data):
    """Whatever a damaged header says (lengths, counts, types, offsets), loading ends in a model or an
    EngineError — never an IndexError/MemoryError/struct.error from deep inside a parser."""
    original = tiny_ggufs("qwen2").read_bytes()
    header = open_gguf(tiny_ggufs("qwen2")).data_offset  # metadata and tensor infos end here
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(4, header - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    path = tmp_path / "damaged.gguf"
    path.write_bytes(bytes(raw))
    error: EngineError | None = None
    try:
        load_model(path)
    except EngineError as exc:
        error = exc
    assert error is None or error.code == "bad_request"


def test_impossible_head_counts_are_a_file_error(tmp_path):
    import gguf

    w = gguf.GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for key, value in (
        ("block_count", 1),
        ("embedding_length", 64),
        ("feed_forward_length", 96),
        ("attention.head_count", 4),
        ("attention.head_count_kv", 3),
        ("context_length", 32),
    ):
        w.add_uint32(f"llama.{key}", value)
    w.add_tensor("token_embd.weight", np.zeros((10, 64), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "bad.gguf")
    assert "no valid model" in err.value.message
    assert "multiple of n_kv_heads" in err.value.message


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_q4_and_q8_tensors_dequantize_exactly_as_gguf_does(tmp_path, kind):
    import gguf

    x = np.random.default_rng(3).standard_normal((5, 256)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    path = _single_tensor_gguf(tmp_path / "t.gguf", "blk.0.ffn_up.weight", gguf.quants.quantize(x, qtype), qtype)
    t = open_gguf(path).tensors[0]
    want = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(5, 256)
    assert torch.equal(dequantize_tensor(t), torch.from_numpy(want))


def test_metadata_parses_exactly_as_ggufs_own_reader(smollm2_path):
    """Our reader builds array fields in one pass (engine/gguf_loader.py); every part must match gguf's."""
    import gguf

    ours, theirs = open_gguf(smollm2_path), gguf.GGUFReader(smollm2_path)
    assert list(ours.fields) == list(theirs.fields)
    for key, mine in ours.fields.items():
        other = theirs.fields[key]
        assert (mine.types, list(mine.data), len(mine.parts)) == (other.types, list(other.data), len(other.parts))
        for a, b in zip(mine.parts, other.parts, strict=True):
            assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), key
    assert [(t.name, t.data_offset) for t in ours.tensors] == [(t.name, t.data_offset) for t in theirs.tensors]
