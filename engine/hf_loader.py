"""Hugging Face checkpoint directory → our model: ``config.json``, safetensors weights, tokenizer files.

Covers the Llama family as transformers writes it (``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM``): one ``model.safetensors`` or shards listed in ``model.safetensors.index.json``; biases
(Qwen2), tied or untied embeddings, RoPE scaling whether spelled ``rope_scaling`` + ``rope_theta``
(transformers 4) or ``rope_parameters`` (transformers 5). Hugging Face already uses the rotate-half RoPE
layout, so weights map by name only. What differs between architectures — ``config.json`` → ``ModelConfig``, the
parameter names — is the family's (``engine.families``); this module reads the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.errors import EngineError, ModelFileError, TokenizerError, UnsupportedModel
from engine.families import hf_family
from engine.model import ModelConfig
from engine.tokenizer import Tokenizer
from engine.weights import ModelParts

_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


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


def hf_config(cfg: dict[str, Any]) -> ModelConfig:
    """``ModelConfig`` from a transformers ``config.json`` dict, read by its family; ``UnsupportedModel`` for
    other families, ``ModelFileError`` naming a missing key or an invalid value."""
    family = hf_family(cfg.get("model_type"))
    try:
        return family.config_from_hf(cfg)
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
    state = read_safetensors(weight_files(d), hf_family(cfg.get("model_type")).hf_to_ours)
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
