"""The model-family records: every family loads through both loaders like transformers, its tensor names are
llama.cpp's own, and a family whose math the model lacks is refused by name."""

from __future__ import annotations

import pytest
import torch
from gguf.constants import MODEL_ARCH, MODEL_TENSOR, MODEL_TENSORS

from engine.errors import UnsupportedModel
from engine.families import FAMILIES, LLAMA, MISTRAL, QWEN2, Family, gguf_family, gguf_tensor_name, hf_family
from engine.loader import load_model
from engine.model import ModelConfig

from .conftest import write_gguf

# Each family's tiny checkpoint (a conftest VARIANT). A family added to FAMILIES needs one here.
FAMILY_CHECKPOINTS = {"llama": "llama_tied", "mistral": "mistral", "qwen2": "qwen2_untied"}
TOL = 1e-3


def test_every_family_has_a_tiny_checkpoint():
    assert set(FAMILY_CHECKPOINTS) == {f.name for f in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILY_CHECKPOINTS))
def test_family_loads_through_both_loaders_with_transformers_logits(tiny_models, trained_tokenizer, tmp_path, name):
    family = next(f for f in FAMILIES if f.name == name)
    tiny = tiny_models(FAMILY_CHECKPOINTS[name])
    assert hf_family(tiny.hf.config.model_type) is family
    arch = family.gguf_archs[0]
    assert gguf_family(arch) is family
    ids = torch.randint(0, tiny.vocab_size, (1, 30), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        want = tiny.hf(ids).logits
        from_hf = load_model(tiny.path)
        from_gguf = load_model(write_gguf(tiny, tmp_path / f"{name}.gguf", trained_tokenizer, arch=arch))
        for loaded in (from_hf, from_gguf):
            assert loaded.config.arch == family.arch
            assert (loaded.model(ids) - want).abs().max().item() <= TOL
    assert from_gguf.meta["architecture"] == arch
    assert from_gguf.meta["ignored_tensors"] == []


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_tensor_names_are_the_ones_ggufs_own_map_gives(family):
    """Our table against gguf's TensorNameMap (llama.cpp's converter's HF → GGUF names): no name of ours is made up."""
    import gguf

    n_layers = 2
    theirs = gguf.get_tensor_name_map(family.gguf_arch, n_layers)
    for kind, t in family.tensors.items():
        assert kind in MODEL_TENSORS[family.gguf_arch]
        for suffix in ("weight", "bias") if t.bias else ("weight",):
            for i in range(n_layers) if "{i}" in t.hf else [None]:
                hf = f"{t.hf.replace('{i}', str(i))}.{suffix}"
                name = gguf_tensor_name(kind, i, suffix)
                assert theirs.get_type_and_name(hf, try_suffixes=(".weight", ".bias")) == (kind, name)
                assert family.hf_to_ours(hf) == family.gguf_to_ours(name) is not None
                assert family.gguf_kind(name) == kind


def test_gguf_kind_of_names_outside_the_table_is_none():
    assert LLAMA.gguf_kind("blk.0.attn_rot_embd") is None
    assert LLAMA.gguf_kind("rope_freqs.weight") is None
    assert LLAMA.gguf_kind("blk.12.ffn_down.weight") == MODEL_TENSOR.FFN_DOWN
    assert LLAMA.is_config_tensor("rope_freqs.weight")
    assert not LLAMA.is_config_tensor("output.weight")


def test_only_llama_style_families_unpermute_q_and_k():
    config = ModelConfig(vocab_size=32, dim=64, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=96)
    for family in (LLAMA, MISTRAL):
        assert family.qk_heads(MODEL_TENSOR.ATTN_Q, config) == 4
        assert family.qk_heads(MODEL_TENSOR.ATTN_K, config) == 2
        assert family.qk_heads(MODEL_TENSOR.ATTN_V, config) is None
    assert QWEN2.qk_heads(MODEL_TENSOR.ATTN_Q, config) is None


def test_a_family_whose_math_the_model_lacks_is_refused_by_name():
    gemma = Family(
        name="gemma",
        arch="gemma",
        gguf_archs=("gemma",),
        hf_model_types=("gemma",),
        gguf_arch=MODEL_ARCH.GEMMA,
        tie_embeddings=True,
        norm="rms_plus_one",
        activation="gelu_tanh",
    )
    with pytest.raises(UnsupportedModel) as err:
        gemma.check_runnable()
    assert err.value.code == "bad_request"
    assert "'gemma'" in err.value.message
    assert "norm 'rms_plus_one'" in err.value.message
    assert "activation 'gelu_tanh'" in err.value.message
    for family in FAMILIES:
        family.check_runnable()


@pytest.mark.parametrize(
    ("lookup", "name", "message"),
    [
        (gguf_family, "gemma2", "unsupported model architecture 'gemma2' (this engine runs llama, mistral, qwen2)"),
        (hf_family, "phi3", "unsupported model type 'phi3' (this engine runs llama, mistral, qwen2)"),
        (hf_family, None, "unsupported model type None"),
    ],
)
def test_unknown_family_names_are_refused_with_what_we_run(lookup, name, message):
    with pytest.raises(UnsupportedModel) as err:
        lookup(name)
    assert err.value.code == "bad_request"
    assert message in err.value.message
