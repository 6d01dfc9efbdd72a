"""The model store: models the user added, by name, under ``<data_dir>/models/<name>/`` with an ``index.json``.

Adding inspects the model first (so a truncated download or an unsupported architecture is refused before
anything is copied), then hard-links the files when source and store share a filesystem (a 7B GGUF is not
copied twice) and copies otherwise. The index keeps what ``list`` shows — format, size, architecture,
parameter count, quantization — so listing never opens a model file. The packaged default model appears
as ``smollm2-135m-instruct`` without being copied and cannot be removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.errors import InvalidArgument, ModelExists, ModelNotFound, ProtectedModel
from engine.loader import DEFAULT_MODEL_NAME, default_model_path, inspect_model

# Index updates are read-modify-write; the daemon runs store calls on worker threads.
_INDEX_LOCK = threading.Lock()
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_LISTED = ("name", "format", "size", "arch", "params", "quant", "context", "path")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed: copy
        shutil.copy2(src, dst)


def _default_name(source: Path) -> str:
    stem = source.stem if source.is_file() else source.name
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:64] or "model"


@lru_cache(maxsize=4)
def _packaged_entry(path: str, mtime_ns: int) -> dict[str, Any]:
    # Reading a GGUF's metadata takes seconds (the vocabulary is parsed): do it once per file version.
    info = inspect_model(path)
    return {k: info.get(k) for k in _LISTED} | {"name": DEFAULT_MODEL_NAME, "default": True}


class ModelStore:
    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "models"
        self.index_path = self.root / "index.json"

    # -- index --------------------------------------------------------------------------------------------------
    def _read_index(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a torn index is rebuilt by the next add/remove; the model directories are the truth
        return data.get("models", {}) if isinstance(data, dict) else {}

    def _write_index(self, models: dict[str, dict[str, Any]]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "models": models}, indent=2))
        tmp.replace(self.index_path)

    def _default_entry(self) -> dict[str, Any] | None:
        try:
            path = default_model_path()
        except ModelNotFound:
            return None
        return _packaged_entry(str(path), path.stat().st_mtime_ns)

    # -- public -------------------------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every model: the packaged default first, then the added ones by name."""
        out = []
        default = self._default_entry()
        if default:
            out.append(dict(default))
        out.extend(self._read_index()[name] | {"default": False} for name in sorted(self._read_index()))
        return out

    def add(self, source: str | Path, name: str | None = None, *, copy: bool = False) -> dict[str, Any]:
        """Add a GGUF file or a model directory under ``name``; hard-links unless ``copy``. Returns the entry."""
        src = Path(source).expanduser().resolve()
        name = _default_name(src) if name is None else name
        if not _NAME.match(name):
            raise InvalidArgument(
                f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if name == DEFAULT_MODEL_NAME:
            raise ModelExists(f"{name!r} is the packaged default model's name")
        self._check_free(name, self._read_index())  # fail fast, before reading a big file
        info = inspect_model(src)  # refuses missing, corrupt and unsupported models before copying anything
        with _INDEX_LOCK:
            models = self._read_index()
            self._check_free(name, models)
            target = self.root / name
            target.mkdir(parents=True)
            try:
                place = shutil.copy2 if copy else _link_or_copy
                src_file = Path(info["path"])
                if src_file.is_file():
                    place(str(src_file), str(target / src_file.name))
                    path = target / src_file.name
                else:
                    shutil.copytree(src_file, target, dirs_exist_ok=True, copy_function=place)
                    path = target
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            entry = {k: info.get(k) for k in _LISTED} | {
                "name": name,
                "path": str(path),
                "source": str(src),
                "added": time.time(),
            }
            models[name] = entry
            self._write_index(models)
        return entry

    def _check_free(self, name: str, models: dict[str, Any]) -> None:
        if name in models or (self.root / name).exists():
            raise ModelExists(f"a model named {name!r} already exists; remove it first or pick another name")

    def path_of(self, name: str) -> Path:
        """Where the model called ``name`` lives (the default model's package file for the default name)."""
        if name == DEFAULT_MODEL_NAME:
            return default_model_path()
        entry = self._read_index().get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} in the store (see the model list)")
        return Path(entry["path"])

    def resolve(self, name_or_path: str | Path) -> Path:
        """A stored model's name or a path on disk → the path to load."""
        text = str(name_or_path)
        if text == DEFAULT_MODEL_NAME or text in self._read_index():
            return self.path_of(text)
        p = Path(text).expanduser()
        if p.exists():
            return p
        raise ModelNotFound(f"no model named {text!r} in the store and no such file or directory")

    def show(self, name: str) -> dict[str, Any]:
        """The list entry plus everything the file's metadata says (config, GGUF keys, license …)."""
        path = self.path_of(name)
        entry = self._read_index().get(name, {})
        return {**inspect_model(path), **entry, "name": name, "default": name == DEFAULT_MODEL_NAME}

    def remove(self, name: str) -> None:
        if name == DEFAULT_MODEL_NAME:
            raise ProtectedModel(f"{name!r} is the packaged default model and cannot be removed")
        with _INDEX_LOCK:
            models = self._read_index()
            if name not in models:
                raise ModelNotFound(f"no model named {name!r} in the store")
            shutil.rmtree(self.root / name, ignore_errors=True)
            del models[name]
            self._write_index(models)
