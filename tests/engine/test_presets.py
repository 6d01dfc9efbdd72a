"""Model presets: parameter counts checked three ways (our formula, an instantiated model, transformers' Llama of the
same shape, and the published counts of the real models the presets copy), and the memory estimate."""

from __future__ import annotations

import pytest
import torch

from engine.memory import estimate_memory
from engine.model import PRESETS, ModelConfig, Transformer, param_count

# Published parameter counts of the real models whose shapes the presets copy.
PUBLISHED = {
    "mini": 134_515_008,  # SmolLM2-135M
    "small": 361_821_120,  # SmolLM2-360M
    "large": 3_212_749_824,  # Llama-3.2-3B
    "xl": 6_738_415_616,  # Llama-2-7B
    "xxl": 8_030_261_248,  # Llama-3-8B
    "titan": 13_015_864_320,  # Llama-2-13B
    "colossus": 32_528_943_616,  # LLaMA-30B
    "omega": 70_553_706_496,  # Llama-3-70B
}
SMALL = ("pi_zero", "pi_nano", "pi_micro", "pi")


def test_there_are_fifteen_presets_from_pi_zero_to_omega():
    assert len(PRESETS) == 15
    assert next(iter(PRESETS)) == "pi_zero"
    assert list(PRESETS)[-1] == "omega"


def test_presets_grow_monotonically():
    counts = [param_count(c) for c in PRESETS.values()]
    assert counts == sorted(counts)
    assert 400_000 <= counts[0] <= 600_000  # pi_zero is the ~0.5M toy
    assert counts[-1] >= 70_000_000_000


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_matches_the_published_parameter_count(name):
    assert param_count(PRESETS[name]) == PUBLISHED[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_equals_the_model_built_on_the_meta_device(name):
    with torch.device("meta"):
        model = Transformer(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == param_count(PRESETS[name])


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_equals_transformers_llama_of_the_same_shape(name):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = PRESETS[name]
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        intermediate_size=c.ffn_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        tie_word_embeddings=c.tie_embeddings,
    )
    with torch.device("meta"):
        ref = LlamaForCausalLM(hf_config)
    assert sum(p.numel() for p in ref.parameters()) == param_count(c)


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_instantiate_and_run(name):
    config = ModelConfig.from_name(name, max_seq_len=32)
    model = Transformer(config)
    assert sum(p.numel() for p in model.parameters()) == param_count(config)
    with torch.no_grad():
        logits = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, config.vocab_size)
    assert torch.isfinite(logits).all()


def test_param_count_includes_biases_and_untied_head():
    base = ModelConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, tie_embeddings=True)
    variants = [base, ModelConfig.from_name("pi_zero", attn_bias=True, mlp_bias=True, tie_embeddings=False)]
    for config in variants:
        assert sum(p.numel() for p in Transformer(config).parameters()) == param_count(config)


def test_unknown_preset_is_refused_with_the_known_names():
    with pytest.raises(ValueError, match=r"unknown preset 'gigantic'.*pi_zero"):
        ModelConfig.from_name("gigantic")


# -- memory estimate ------------------------------------------------------------------------------------------------
def test_kv_cache_estimate_is_exact_for_float_caches():
    c = PRESETS["mini"]
    est = estimate_memory(c, torch.float32, context=2048, batch=3)
    assert est["kv_cache"] == 2 * c.n_layers * 3 * 2048 * c.kv_heads * c.hd * 4
    assert estimate_memory(c, torch.bfloat16, context=2048, batch=3)["kv_cache"] == est["kv_cache"] // 2


def test_kv_cache_estimate_matches_an_allocated_cache():
    config = ModelConfig.from_name("pi_zero")
    model = Transformer(config)
    model.setup_cache(max_batch=2, max_seq=128)
    allocated = sum(layer.attention.cache.k.nbytes + layer.attention.cache.v.nbytes for layer in model.layers)
    assert estimate_memory(config, torch.float32, context=128, batch=2)["kv_cache"] == allocated


def test_weight_estimate_matches_the_model_at_each_float_precision():
    config = ModelConfig.from_name("pi_zero")
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2), ("float16", 2)):
        assert estimate_memory(config, dtype, context=16)["weights"] == param_count(config) * size


def test_quantized_estimate_is_near_the_real_q4_1_file(smollm2_path):
    est = estimate_memory(PRESETS["mini"], "q4_1", context=1)["weights"]
    assert 0.75 < est / smollm2_path.stat().st_size < 1.1  # the file keeps its embedding in Q8_0


@pytest.mark.parametrize("key", ["context", "batch"])
def test_estimate_grows_with_context_and_batch(key):
    c = PRESETS["small"]
    small = estimate_memory(c, torch.float32, context=512, batch=1)
    big = estimate_memory(
        c, torch.float32, **({"context": 4096, "batch": 1} if key == "context" else {"context": 512, "batch": 4})
    )
    assert big["kv_cache"] > small["kv_cache"]
    assert big["total"] > small["total"]


def test_estimate_shrinks_with_precision():
    c = PRESETS["xl"]
    totals = [estimate_memory(c, d, context=4096)["weights"] for d in ("float32", "bfloat16", "int8", "q4_0")]
    assert totals == sorted(totals, reverse=True)
    est = estimate_memory(c, "bfloat16", context=4096)
    assert est["total"] >= est["weights"] + est["kv_cache"] + est["activations"]
    assert 13e9 < est["weights"] < 14e9  # a 7B model in bf16


def test_estimate_defaults_to_the_model_context():
    c = PRESETS["pi"]
    assert estimate_memory(c)["kv_cache"] == estimate_memory(c, "float32", context=c.max_seq_len)["kv_cache"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float8"}, "unknown weight precision"),
        ({"batch": 0}, "batch"),
        ({"context": 0}, "context"),
    ],
)
def test_estimate_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        estimate_memory(PRESETS["pi"], **kwargs)
