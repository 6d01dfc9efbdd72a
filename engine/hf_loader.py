"""Hugging Face checkpoint directory → our model: ``config.json``, safetensors weights, tokenizer files.

Covers the Llama family as transformers writes it (``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM``): one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``; biases
(Qwen2), tied or untied embeddings, RoPE scaling whether spelled ``rope_scaling`` + ``rope_theta``
(transformers 4) or ``rope_parameters`` (transformers 5). Hugging Face already uses the rotate-half RoPE
layout, so weights map by name only, through one table (``HF_NAME_MAP``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from engine.errors import EngineError, ModelFileError, TokenizerError, UnsupportedModel
from engine.model import ModelConfig
from engine.tokenizer import Tokenizer
from engine.weights import ModelParts, map_name

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

# Hugging Face parameter name → ours; ``{i}`` is the layer index. The one name table of this format.
HF_NAME_MAP: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attention_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.ffn_norm.weight",
    **{
        f"model.layers.{{i}}.self_attn.{hf}_proj.{kind}": f"layers.{{i}}.attention.{ours}.{kind}"
        for hf, ours in (("q", "wq"), ("k", "wk"), ("v", "wv"), ("o", "wo"))
        for kind in ("weight", "bias")
    },
    **{
        f"model.layers.{{i}}.mlp.{hf}_proj.{kind}": f"layers.{{i}}.feed_forward.{ours}.{kind}"
        for hf, ours in (("gate", "w1"), ("up", "w3"), ("down", "w2"))
        for kind in ("weight", "bias")
    },
}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def hf_to_our_name(name: str) -> str | None:
    """Our parameter name for a Hugging Face parameter name, or ``None`` for anything else (rotary buffers…)."""
    return map_name(name, HF_NAME_MAP, _LAYER_NAME, "model.layers.{i}.")


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelFileError(f"{path.parent} has no {path.name} ({what})") from exc
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} does not hold a JSON object")
    return data


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either spelling; scaling is ``None`` for plain RoPE."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:  # per-layer-type form; llama has one type
        params = params["full_attention"]
    scaling = dict(params) if isinstance(params, dict) else dict(cfg.get("rope_scaling") or {})
    theta = float(scaling.pop("rope_theta", None) or cfg.get("rope_theta") or 10000.0)
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None)
    if kind in (None, "default"):
        return theta, None
    if kind == "dynamic":
        # transformers' dynamic NTK leaves RoPE untouched up to max_position_embeddings and rescales every
        # position once a sequence grows past it. Our table is static, so we run the exact unscaled RoPE and
        # keep the context at max_position_embeddings rather than approximate beyond it.
        return theta, None
    return theta, {"type": kind, **scaling}


def hf_config(cfg: dict[str, Any]) -> ModelConfig:
    """``ModelConfig`` from a transformers ``config.json`` dict; ``UnsupportedModel`` for other families."""
    mtype = cfg.get("model_type")
    if mtype not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(
            f"unsupported model type {mtype!r} (this engine runs {', '.join(SUPPORTED_MODEL_TYPES)})",
            {"model_type": mtype},
        )
    try:
        heads = int(cfg["num_attention_heads"])
        dim = int(cfg["hidden_size"])
        theta, scaling = _rope(cfg)
        ctx = int(cfg.get("max_position_embeddings", 2048))
        window = cfg.get("sliding_window")
        if mtype == "mistral" and window and cfg.get("use_sliding_window", True):
            ctx = min(ctx, int(window))  # full attention equals sliding-window attention up to the window
        eos = cfg.get("eos_token_id")
        return ModelConfig(
            vocab_size=int(cfg["vocab_size"]),
            dim=dim,
            n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            ffn_dim=int(cfg["intermediate_size"]),
            head_dim=int(cfg.get("head_dim") or dim // heads),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=ctx,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attn_bias=mtype == "qwen2" or bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            arch="qwen2" if mtype == "qwen2" else "llama",
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) and eos else eos,
        )
    except KeyError as exc:
        raise ModelFileError(f"config.json lacks {exc.args[0]!r}") from exc
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelFileError(f"config.json has an invalid value: {exc}") from exc


def weight_files(d: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (one, or the shards its index lists)."""
    single = d / "model.safetensors"
    index = d / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFileError(f"{index} has no weight_map")
        return [d / f for f in dict.fromkeys(weight_map.values())]
    if any(d.glob("*.bin")):
        raise UnsupportedModel(f"{d} holds PyTorch .bin weights; convert them to safetensors first")
    raise ModelFileError(f"{d} has neither model.safetensors nor model.safetensors.index.json")


def read_safetensors(files: list[Path], name_map: Any) -> dict[str, torch.Tensor]:
    """Tensors of ``files`` renamed by ``name_map(name) -> ours | None``; broken files raise ``ModelFileError``."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.is_file():
            raise ModelFileError(f"weight shard {f.name} is missing from {f.parent}")
        try:
            with safe_open(str(f), framework="pt") as sf:
                for name in sf.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    ours = name_map(name)
                    if ours is not None:
                        state[ours] = sf.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ModelFileError(f"{f} is truncated or corrupt: {exc}") from exc
    return state


def hf_tokenizer(d: Path, cfg: dict[str, Any]) -> Tokenizer:
    """Tokenizer of an HF directory: ``tokenizer.json`` + ``tokenizer_config.json`` (+ generation stop ids)."""
    tj = d / "tokenizer.json"
    if not tj.is_file():
        raise TokenizerError(f"{d} has no tokenizer.json (sentencepiece-only tokenizer.model files are not supported)")
    tcfg_path = d / "tokenizer_config.json"
    tcfg: dict[str, Any] = read_json(tcfg_path, "tokenizer config") if tcfg_path.is_file() else {}
    jinja = d / "chat_template.jinja"
    if not tcfg.get("chat_template") and jinja.is_file():  # transformers 5 writes the template beside
        tcfg["chat_template"] = jinja.read_text()
    if tcfg.get("bos_token") is None and cfg.get("bos_token_id") is not None:
        tcfg["bos_token_id"] = cfg["bos_token_id"]
    tok = Tokenizer.from_file(tj, tcfg)
    stops: list[Any] = []
    for source in (
        cfg,
        read_json(d / "generation_config.json", "") if (d / "generation_config.json").is_file() else {},
    ):
        eos = source.get("eos_token_id")
        stops.extend(eos if isinstance(eos, list) else [eos])
    tok.stop_ids.update(int(i) for i in stops if isinstance(i, int))
    if tok.eos_id is None and cfg.get("eos_token_id") is not None:
        eos = cfg["eos_token_id"]
        tok.eos_id = eos[0] if isinstance(eos, list) else eos
    return tok


def read_hf_dir(path: str | Path) -> ModelParts:
    """Config, weights in our names, tokenizer and metadata of a Hugging Face checkpoint directory."""
    d = Path(path)
    cfg = read_json(d / "config.json", "model config")
    config = hf_config(cfg)
    state = read_safetensors(weight_files(d), hf_to_our_name)
    try:
        tokenizer = hf_tokenizer(d, cfg)
    except EngineError:
        raise
    except Exception as exc:
        raise TokenizerError(f"{d}: cannot build the tokenizer: {exc}") from exc
    dtypes = sorted({_DTYPE_NAMES.get(t.dtype, str(t.dtype)) for t in state.values() if t.dim() > 1})
    meta = {
        "format": "hf",
        "path": str(d),
        "name": cfg.get("_name_or_path") or d.name,
        "architecture": cfg.get("model_type"),
        "quant": "+".join(dtypes) if dtypes else None,
    }
    return ModelParts(config=config, state=state, tokenizer=tokenizer, meta=meta)
