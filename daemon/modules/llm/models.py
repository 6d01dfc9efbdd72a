"""``model.*``: the model store over the bus, and switching the native backend to another model.

The store (``engine.model_store``) reads model metadata and copies files, which blocks: every call runs in a
worker thread. ``model.load`` builds a new backend for the model and swaps it in once it has loaded, so the
daemon keeps answering with the old model meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bus.errors import Conflict
from bus.service import Call
from daemon.module import method
from daemon.modules.llm.base import Backend, as_bus_error
from daemon.modules.llm.service import LLMService

_MODEL_NAME: Final = {"type": "string", "minLength": 1, "maxLength": 4096}
NAME_SCHEMA: Final = {"type": "object", "properties": {"name": _MODEL_NAME}, "required": ["name"]}
ADD_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1, "maxLength": 4096},
        "name": _MODEL_NAME,
        "copy": {"type": "boolean"},
    },
    "required": ["path"],
}
LIST_SCHEMA: Final = {"type": "object"}


class ModelService:
    def __init__(self, data_dir: Path, llm: LLMService, make_backend: Callable[[str], Backend]) -> None:
        self.data_dir = data_dir
        self.llm = llm
        self.make_backend = make_backend

    def _store(self) -> Any:
        from engine.model_store import ModelStore

        return ModelStore(self.data_dir)

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            raise as_bus_error(exc) from exc

    def _loaded_path(self) -> Path | None:
        path = getattr(self.llm.backend, "path", None)
        return Path(path) if path else None

    @method("model.list", schema=LIST_SCHEMA)
    async def list(self, call: Call) -> dict[str, Any]:
        """Every model in the store (the packaged default first); ``loaded`` marks the one serving now."""
        loaded = self._loaded_path()

        def listing() -> list[dict[str, Any]]:
            models: list[dict[str, Any]] = self._store().list()
            for m in models:
                m["loaded"] = loaded is not None and _same_file(Path(m["path"]), loaded)
            return models

        return {"models": await self._run(listing)}

    @method("model.show", schema=NAME_SCHEMA)
    async def show(self, call: Call) -> dict[str, Any]:
        """Everything the model's metadata says (architecture, quantization, context, license …)."""
        info = await self._run(self._store().show, call.body["name"])
        info.pop("metadata", None)  # raw GGUF keys can be megabytes (vocabularies); show the summary
        return info

    @method("model.add", access="admin", schema=ADD_SCHEMA)
    async def add(self, call: Call) -> dict[str, Any]:
        """Add a GGUF file or model directory to the store (checked before anything is copied)."""
        b = call.body
        return await self._run(self._store().add, b["path"], b.get("name"), copy=b.get("copy", False))

    @method("model.remove", access="admin", schema=NAME_SCHEMA)
    async def remove(self, call: Call) -> dict[str, Any]:
        from engine.loader import DEFAULT_MODEL_NAME

        name = call.body["name"]
        loaded = self._loaded_path()

        def remove() -> None:
            store = self._store()
            # The packaged default is refused by the store itself (forbidden), loaded or not.
            if name != DEFAULT_MODEL_NAME and loaded is not None and _same_file(store.path_of(name), loaded):
                raise Conflict(f"model {name!r} is loaded; load another model before removing it")
            store.remove(name)

        await self._run(remove)
        return {"removed": name}

    @method("model.load", access="admin", schema=NAME_SCHEMA)
    async def load(self, call: Call) -> dict[str, Any]:
        """Switch the LLM to another model; returns once it is loaded and serving."""
        name = call.body["name"]
        await self._run(self._store().resolve, name)  # a clear not_found before building anything
        await self.llm.switch(self.make_backend(name))
        return {"loaded": name, **self.llm.backend.info()}


def _same_file(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()
