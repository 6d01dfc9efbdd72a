"""The native PyTorch engine as a backend: the model on the batching scheduler's worker thread.

One engine thread per model does all of its torch work — loading, quantizing, compiling the decode step, then
serving the scheduler until unload — so the loop keeps serving meanwhile, and torch's OpenMP runtime sees a
single team of threads (two teams on a small box cost a third of the decode speed: ``Scheduler.run``). Each
generation is one ``engine.scheduler`` request; its handle feeds an ``asyncio.Queue`` on our loop through
``call_soon_threadsafe``, which ``NativeGeneration`` reads directly — no extra hop, no polling. ``cancel()``
sets the handle's flag, which the scheduler checks before its next decode step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from daemon.llm.base import Backend, Generation, Item

if TYPE_CHECKING:
    from engine.scheduler import RequestHandle, Scheduler
    from engine.tokenizer import Tokenizer

log = logging.getLogger("enigma.llm.native")

DEFAULT_MAX_BATCH = 8
# The KV cache is preallocated for max_batch rows of the whole context: SmolLM2's own 8192 would hold 2.9 GB
# (fp32) resident for a 135M model. 4096 (1.45 GB) is the default cap; context_length sets another.
DEFAULT_CONTEXT = 4096


def resolve_model_path(model: str, data_dir: Path) -> Path:
    """A model name in the model store, a file or directory path, or ``""``/``"default"`` for the packaged
    default model."""
    from engine.loader import default_model_path
    from engine.model_store import ModelStore

    if model in ("", "default"):
        return Path(default_model_path())
    return Path(ModelStore(data_dir).resolve(model))


class NativeGeneration(Generation):
    """A ``Generation`` reading the scheduler handle's own asyncio queue."""

    handle: RequestHandle
    _aq: asyncio.Queue[Any]

    async def _next_item(self) -> Item:
        from engine.generate import Usage as EngineUsage

        ev = await self._aq.get()
        if isinstance(ev, str):
            # Deltas are whole characters; several tokens may make one delta, so count from the request state.
            done = len(self.handle.state.completion)
            tokens, self._counted = done - self._counted, done
            return Item("text", text=ev, tokens=max(tokens, 1))
        if isinstance(ev, EngineUsage):
            return Item(
                "done",
                finish_reason=ev.finish_reason,
                prompt_tokens=ev.prompt_tokens,
                completion_tokens=ev.completion_tokens,
            )
        return Item("error", error=ev)

    _counted: int = 0


class NativeBackend(Backend):
    """Options (``[modules.llm]``): ``model``, ``max_batch`` (8), ``context_length`` (the model's, capped by
    this; 4096 when unset), ``max_queue`` (256), ``dtype`` (``float32`` | ``bfloat16``), ``kernels``
    (``auto``: the fastest weight-only quantized kernels — a GGUF's Q4 blocks load into them unchanged;
    ``float``; ``int8``; ``int4``; ``none`` keeps the plain float model, exactly as loaded), ``compile``
    (``auto``: compile the decode step with ``torch.compile`` when a C++ compiler is present, else stay eager;
    ``on``: fail the load if it cannot; ``off``). The first compile of SmolLM2 took about two minutes on two
    cores; the kernels are cached under ``$CACHE_DIRECTORY`` (systemd) or ``$XDG_CACHE_HOME/enigma``, and a
    load from that cache compiles in 15–25 s."""

    kind: ClassVar[str] = "native"

    def __init__(self, model: str, options: dict[str, Any], data_dir: Path) -> None:
        super().__init__(model or "default", options)
        self.data_dir = data_dir
        self.max_batch = int(options.get("max_batch", DEFAULT_MAX_BATCH))
        self.max_queue = int(options.get("max_queue", 256))
        self._max_seq = options.get("context_length")
        self.dtype = str(options.get("dtype", "float32"))
        self.kernels = str(options.get("kernels", "auto"))
        if self.kernels not in ("auto", "float", "int8", "int4", "none"):
            raise ValueError(f"kernels must be auto, float, int8, int4 or none, got {self.kernels!r}")
        self.compile = str(options.get("compile", "auto"))
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be auto, on or off, got {self.compile!r}")
        self._thread: threading.Thread | None = None
        self.path: Path | None = None
        self.scheduler: Scheduler | None = None
        self.tokenizer: Tokenizer | None = None
        self.meta: dict[str, Any] = {}
        self._abandoned = threading.Event()  # unload() came before the load finished

    async def load(self) -> None:
        self.stage = "finding the model"
        self.path = await asyncio.to_thread(resolve_model_path, self.model, self.data_dir)
        if self.model == "default":
            from engine.loader import DEFAULT_MODEL_NAME

            self.model = DEFAULT_MODEL_NAME  # report the store's name for it, as model.list does
        loop = asyncio.get_running_loop()
        built: asyncio.Future[tuple[Scheduler, Tokenizer]] = loop.create_future()
        self._thread = threading.Thread(
            target=self._engine_main, args=(self.path, loop, built), name=f"engine-{self.model}", daemon=True
        )
        self._thread.start()
        self.scheduler, self.tokenizer = await built

    def _engine_main(self, path: Path, loop: asyncio.AbstractEventLoop, built: asyncio.Future[Any]) -> None:
        """The engine thread: load and prepare, then serve until ``unload`` stops the scheduler."""

        def settle(result: Any, exc: BaseException | None) -> None:  # on the loop
            if built.done():  # the load was cancelled meanwhile: nobody will unload what we built
                if result is not None:
                    result[0].stop(timeout=0)
            elif exc is not None:
                built.set_exception(exc)
            else:
                built.set_result(result)

        try:
            scheduler, tokenizer = self._load_blocking(path)
        except BaseException as exc:  # reported to load()'s caller, which turns it into the module's error
            _call_soon(loop, settle, None, exc)
            return
        if self._abandoned.is_set():  # unloaded (a shutdown during the load): nobody is left to serve
            return
        self.stage = "starting the scheduler"
        scheduler.run(ready=lambda: _call_soon(loop, settle, (scheduler, tokenizer), None))

    def _load_blocking(self, path: Path) -> tuple[Scheduler, Tokenizer]:
        import torch

        from engine.compile import compile_decode
        from engine.loader import load_model
        from engine.scheduler import Scheduler

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.dtype)
        if dtype is None:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        max_seq = int(self._max_seq) if self._max_seq else DEFAULT_CONTEXT
        self.stage = f"loading {path.name}"
        loaded = load_model(path, dtype=dtype, max_seq_len=max_seq)
        self.context_length = min(max_seq, loaded.config.max_seq_len)
        self.meta = {"source": loaded.source, "arch": loaded.config.arch, **_plain(loaded.meta)}
        if self.kernels != "none":
            from engine.quant import prepare_for_inference

            with torch.no_grad():
                self.meta["kernels"] = _plain(prepare_for_inference(loaded.model, self.kernels, loaded.source))
        scheduler = Scheduler(
            loaded.model, loaded.tokenizer, self.max_batch, max_queue=self.max_queue, max_seq=self.context_length
        )
        self.stage = "compiling the decode step"
        report = compile_decode(
            loaded.model, self.compile, batch_sizes=(1, min(2, self.max_batch)), cache_dir=compile_cache_dir()
        )
        self.meta["compiled"] = report["compiled"]
        log.info(
            "loaded %s (%s), context %d, max_batch %d, decode step %s",
            path,
            loaded.config.arch,
            self.context_length,
            self.max_batch,
            f"compiled in {report['compile_s']} s" if report["compiled"] else f"eager ({report['reason']})",
        )
        return scheduler, loaded.tokenizer

    async def unload(self) -> None:
        scheduler, self.scheduler = self.scheduler, None
        thread, self._thread = self._thread, None
        self._abandoned.set()
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        if thread is not None and scheduler is not None:
            await asyncio.to_thread(thread.join, 10.0)
        # Without a scheduler the load was cancelled mid-way (a SIGTERM while the model loads): torch cannot be
        # interrupted, and joining would hold the shutdown for as long as the load has left (tens of seconds).
        # The thread is a daemon thread and sees ``_abandoned`` as soon as the model is built, then ends.

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise RuntimeError("the model is not loaded")
        return self.tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self._tok().encode(text))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return self._tok().apply_chat_template(messages, add_generation_prompt=True)

    def generate(self, prompt: str, sampling: dict[str, Any]) -> Generation:
        from engine.sampling import SamplingParams

        if self.scheduler is None:
            raise RuntimeError("the model is not loaded")
        tok = self._tok()
        params = SamplingParams(**sampling)
        ids = tok.encode(prompt, add_bos=tok.add_bos)
        loop = asyncio.get_running_loop()
        handle = self.scheduler.submit(ids, params)
        gen = NativeGeneration(model=self.model, loop=loop, prompt_tokens=len(ids), on_cancel=handle.cancel)
        gen.handle = handle
        gen._aq = handle.attach(loop)
        return gen

    def load_stats(self) -> dict[str, int]:
        if self.scheduler is None:
            return {"queue": 0, "active": 0}
        st = self.scheduler.stats()
        return {"queue": int(st["queued"]), "active": int(st["active"])}

    def engine_stats(self) -> dict[str, Any]:
        return {} if self.scheduler is None else self.scheduler.stats()

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "path": str(self.path) if self.path else None,
            "max_batch": self.max_batch,
            **self.meta,
        }


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels between starts: systemd's CacheDirectory, else the XDG cache."""
    if os.environ.get("CACHE_DIRECTORY"):
        return Path(os.environ["CACHE_DIRECTORY"].split(":")[0]) / "inductor"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "enigma" / "inductor"


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """The scalar facts of a loader's metadata (what can travel on the bus as is)."""
    return {k: v for k, v in meta.items() if isinstance(v, str | int | float | bool) and not isinstance(v, bytes)}


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """``call_soon_threadsafe`` from the engine thread, which may outlive the loop of a daemon that stopped
    while it loaded: the result then has nobody to go to."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed
        log.debug("the event loop closed before the engine thread reported back")
