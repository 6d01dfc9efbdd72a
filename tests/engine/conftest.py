"""Fixtures for the engine correctness tests: tiny random Hugging Face checkpoints (Llama, Mistral, Qwen2) built
with transformers into temp dirs, the same weights written as GGUF files the way llama.cpp's converter writes
them, and the packaged SmolLM2 model. Everything is session-scoped: built once, a few hundred ms each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the reference library must never reach for the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there!",
    "def add(a, b):\n    return a + b  # sum of two numbers\n",
    "Ünïcödé wörds, 日本語のテキスト, 中文文本 and emoji 😀🚀 live here too.",
    "Numbers 12345 and 3.14159; whitespace   runs\t\tand\n\nnewlines.",
] * 10
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# One entry per architecture variant the loaders must get right.
VARIANTS: dict[str, dict[str, Any]] = {
    # GQA, untied head, Llama 3 RoPE scaling
    "llama": {
        "model_type": "llama",
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 50000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "llama_tied": {"model_type": "llama", "num_key_value_heads": 4, "tie_word_embeddings": True},
    "mistral": {
        "model_type": "mistral",
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
        "sliding_window": None,
    },
    # Qwen2: q/k/v biases, tied and untied
    "qwen2": {"model_type": "qwen2", "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen2_untied": {"model_type": "qwen2", "num_key_value_heads": 1, "tie_word_embeddings": False},
}


@dataclass
class TinyModel:
    name: str
    path: Path  # the HF checkpoint directory
    hf: Any  # the transformers model, eval mode, fp32
    vocab_size: int


@pytest.fixture(scope="session")
def trained_tokenizer():
    from engine.tokenizer import Tokenizer

    return Tokenizer.train(CORPUS, vocab_size=400, special_tokens=SPECIALS)


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights big enough that a wrong layout shows in the logits (HF's init is nearly zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def build_hf_model(root: Path, name: str, tokenizer: Any, **extra: Any) -> TinyModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(VARIANTS[name]) | extra
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.token_to_id("<|im_start|>"),
        eos_token_id=tokenizer.token_to_id("<|im_end|>"),
        **spec,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, seed=sum(map(ord, name)))
    model.eval()
    path = root / name
    model.save_pretrained(path)
    tokenizer.save(path)
    return TinyModel(name=name, path=path, hf=model, vocab_size=tokenizer.vocab_size)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, trained_tokenizer) -> Callable[[str], TinyModel]:
    """``tiny_models("qwen2")`` → a tiny random checkpoint of that variant (built on first use)."""
    root = tmp_path_factory.mktemp("hf")
    built: dict[str, TinyModel] = {}

    def get(name: str) -> TinyModel:
        if name not in built:
            built[name] = build_hf_model(root, name, trained_tokenizer)
        return built[name]

    return get


# -- GGUF writing, as llama.cpp's convert_hf_to_gguf does it ----------------------------------------------------
def hf_to_gguf_names(model_type: str, n_layers: int) -> dict[str, tuple[Any, str]]:
    """Hugging Face name → (tensor kind, GGUF name) for a checkpoint of ``n_layers``, from its family's table."""
    from engine.families import gguf_tensor_name, hf_family

    out: dict[str, tuple[Any, str]] = {}
    for kind, t in hf_family(model_type).tensors.items():
        for suffix in ("weight", "bias"):
            for i in range(n_layers) if "{i}" in t.hf else [None]:
                out[f"{t.hf.replace('{i}', str(i))}.{suffix}"] = (kind, gguf_tensor_name(kind, i, suffix))
    return out


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute, verbatim in numpy."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_gguf_tokenizer(writer: Any, tokenizer: Any, pre: str = "default") -> None:
    tj = json.loads(tokenizer.hf.to_str())
    vocab = sorted(tj["model"]["vocab"].items(), key=lambda kv: kv[1])
    special = {t["content"] for t in tj["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([3 if t in special else 1 for t, _ in vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.token_to_id("<|im_start|>"))
    writer.add_eos_token_id(tokenizer.token_to_id("<|im_end|>"))
    writer.add_add_bos_token(False)


def write_gguf(
    tiny: TinyModel,
    path: Path,
    tokenizer: Any,
    *,
    arch: str | None = None,
    drop: tuple[str, ...] = (),
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """The tiny model as a F32 GGUF, as llama.cpp's converter writes it: under the llama.cpp architecture its
    family follows (Mistral as "llama"), Q/K rows permuted for llama (``LlamaModel.permute``), not for Qwen2."""
    import gguf
    from gguf.constants import MODEL_ARCH_NAMES, MODEL_TENSOR

    from engine.families import hf_family

    cfg = tiny.hf.config
    arch = arch or MODEL_ARCH_NAMES[hf_family(cfg.model_type).gguf_arch]
    names = hf_to_gguf_names(cfg.model_type, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(tiny.name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    add_gguf_tokenizer(w, tokenizer)
    for name, t in tiny.hf.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        kind, gname = names[name]
        if gname in drop:
            continue
        a = t.detach().float().numpy().copy()
        if arch in ("llama", "mistral") and kind in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K):
            heads = cfg.num_attention_heads if kind == MODEL_TENSOR.ATTN_Q else cfg.num_key_value_heads
            a = llamacpp_permute(a, heads)
        w.add_tensor(gname, a)
    for name, a in (extra_tensors or {}).items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def tiny_ggufs(tmp_path_factory, tiny_models, trained_tokenizer) -> Callable[[str], Path]:
    """``tiny_ggufs("llama")`` → the tiny checkpoint of that variant written as a GGUF file."""
    root = tmp_path_factory.mktemp("gguf")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = write_gguf(tiny_models(name), root / f"{name}.gguf", trained_tokenizer)
        return built[name]

    return get


# -- the packaged default model -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from engine.loader import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_path, tmp_path_factory) -> Path:
    """A directory holding (a link to) the SmolLM2 GGUF, as transformers' ``gguf_file=`` wants a directory."""
    d = tmp_path_factory.mktemp("smollm2")
    (d / smollm2_path.name).symlink_to(smollm2_path)
    return d
