"""Our own checkpoint format: what training writes and what every loader can read back without guessing.

A directory with ``model.safetensors`` (our parameter names, no renaming table needed), ``enigma.json``
(the ``ModelConfig`` plus provenance) and the tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``.
Safetensors rather than pickles: loading a checkpoint never executes code from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.errors import ModelFileError
from engine.hf_loader import read_safetensors
from engine.model import ModelConfig, Transformer
from engine.tokenizer import Tokenizer
from engine.weights import ModelParts

CHECKPOINT_FORMAT = "enigma-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_FILE = "enigma.json"
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(
    directory: str | Path, model: Transformer, tokenizer: Tokenizer, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` and ``tokenizer`` into ``directory`` (created if needed); returns the directory."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("output.weight", None)  # the same tensor as the embedding; safetensors refuses shared storage
    tmp = d / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(d / WEIGHTS_FILE)
    tokenizer.save(d)
    doc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "meta": meta or {},
    }
    (d / CONFIG_FILE).write_text(json.dumps(doc, indent=2))
    return d


def checkpoint_quant(directory: str | Path) -> str:
    """The precision the weights are stored in (``F32``, ``BF16``, ``F16``), read from the safetensors header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="pt") as sf:
            name = next(iter(sf.keys()), None)
            dtype = sf.get_slice(name).get_dtype() if name is not None else "F32"
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{directory} has no readable {WEIGHTS_FILE}: {exc}") from exc
    return {"F32": "F32", "BF16": "BF16", "F16": "F16"}.get(dtype, dtype)


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_checkpoint(path: str | Path) -> ModelParts:
    """Config, weights, tokenizer and metadata of a checkpoint written by ``save_checkpoint``."""
    d = Path(path)
    try:
        doc = json.loads((d / CONFIG_FILE).read_text())
    except FileNotFoundError as exc:
        raise ModelFileError(f"{d} has no {CONFIG_FILE}") from exc
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{d / CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{d / CONFIG_FILE} is not an Enigma checkpoint description")
    if int(doc.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelFileError(
            f"{d} was written by a newer Enigma (checkpoint version {doc['version']} > {CHECKPOINT_VERSION})"
        )
    try:
        config = ModelConfig.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{d / CONFIG_FILE} holds an invalid model config: {exc}") from exc
    state = read_safetensors([d / WEIGHTS_FILE], lambda name: name)
    tokenizer = Tokenizer.from_file(d / "tokenizer.json", d / "tokenizer_config.json")
    meta = {
        **(doc.get("meta") or {}),
        "format": "checkpoint",
        "path": str(d),
        "architecture": config.arch,
        "quant": checkpoint_quant(d),
    }
    meta.setdefault("name", d.name)
    return ModelParts(config=config, state=state, tokenizer=tokenizer, meta=meta)
