"""The native PyTorch engine as a backend: the model on the batching scheduler's worker thread.

One engine thread per model does all of its torch work — loading, quantizing, compiling the decode step, then
serving the scheduler until unload — so the loop keeps serving meanwhile, and torch's OpenMP runtime sees a
single team of threads (two teams on a small box cost a third of the decode speed: ``Scheduler.run``). Each
generation is one ``engine.scheduler`` request whose handle calls a listener on the engine thread; the listener
only passes each event to the ``Generation`` (the one bridge to the loop, ``base``), so nothing on the loop
touches the request's state or a tensor. ``cancel()`` sets the handle's flag, which the scheduler checks before
its next decode step.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from bus import paths
from bus.sampling import complete_sampling
from daemon.modules.llm.base import Backend, Generation, Prompt
from daemon.modules.llm.config import QUANTIZE_MODES
from engine.usage import Usage

if TYPE_CHECKING:
    from engine.compile import BackgroundCompile
    from engine.scheduler import Scheduler
    from engine.tokenizer import Tokenizer

log = logging.getLogger("enigma.llm.native")

DEFAULT_MAX_BATCH = 8
# The KV cache is preallocated for max_batch rows of the whole context: SmolLM2's own 8192 would hold 2.9 GB
# (fp32) resident for a 135M model. 4096 (1.45 GB) is the default cap; context_length sets another.
DEFAULT_CONTEXT = 4096
# How the weights are prepared (``engine.quant.prepare_for_inference``'s mode; ``none``: as loaded).


def _quantize_key(options: dict[str, Any]) -> str:
    """``quantize``, or ``kernels`` — its old name, which picked the quantization too — with a warning."""
    if "kernels" not in options:
        return "quantize"
    if "quantize" in options:
        log.warning("[modules.llm] has both quantize and its deprecated name kernels: kernels is ignored")
        return "quantize"
    log.warning("[modules.llm] kernels is deprecated: it picks the quantization, so it is now named quantize")
    return "kernels"


def resolve_model_path(model: str, data_dir: Path) -> Path:
    """A model name in the model store, a file or directory path, or ``""``/``"default"`` for the packaged
    default model."""
    from engine.loader import default_model_path
    from engine.model_store import ModelStore

    if model in ("", "default"):
        return Path(default_model_path())
    return Path(ModelStore(data_dir).resolve(model))


def _listener(gen: Generation) -> Callable[[Any, int], None]:
    """What the scheduler calls on the engine thread with each event of one request: hand it to ``gen``."""

    def on_event(ev: Any, tokens: int) -> None:
        if isinstance(ev, str):
            gen.feed(ev, tokens)
        elif isinstance(ev, Usage):
            gen.finish(ev.finish_reason, ev.prompt_tokens, ev.completion_tokens, usage=ev)
        else:
            gen.fail(ev)

    return on_event


class NativeBackend(Backend):
    """Options (``[modules.llm]``): ``model``, ``max_batch`` (8), ``context_length`` (the model's, capped by
    this; 4096 when unset), ``max_queue`` (256), ``dtype`` (``float32`` | ``bfloat16``), ``quantize``
    (``auto``: the fastest weight-only quantized kernels — a GGUF's Q4 blocks load into them unchanged;
    ``float``; ``int8``; ``int4``; ``none`` keeps the plain float model, exactly as loaded; ``kernels`` is its
    old, deprecated name), ``compile``
    (``auto``: serve eagerly at once and build the compiled decode step in a background process when a C++
    compiler is present; ``on``: wait for it and fail the load without it; ``off``: stay eager). The build
    takes minutes on two cores; its AOTInductor package is stored under ``$CACHE_DIRECTORY`` (systemd) or
    ``$XDG_CACHE_HOME/enigma`` (``bus.paths``) and later starts load it in about a second (``docs/serving.md``)."""

    kind: ClassVar[str] = "native"

    def __init__(self, model: str, options: dict[str, Any], data_dir: Path) -> None:
        super().__init__(model or "default", options)
        self.data_dir = data_dir
        self.max_batch = int(options.get("max_batch", DEFAULT_MAX_BATCH))
        self.max_queue = int(options.get("max_queue", 256))
        self._max_seq = options.get("context_length")
        self.dtype = str(options.get("dtype", "float32"))
        key = _quantize_key(options)
        self.quantize = str(options.get(key, "auto"))
        if self.quantize not in QUANTIZE_MODES:
            raise ValueError(f"{key} must be {', '.join(QUANTIZE_MODES[:-1])} or none, got {self.quantize!r}")
        self.compile = str(options.get("compile", "auto"))
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be auto, on or off, got {self.compile!r}")
        self._thread: threading.Thread | None = None
        self.path: Path | None = None
        self.scheduler: Scheduler | None = None
        self.tokenizer: Tokenizer | None = None
        self.meta: dict[str, Any] = {}
        self._compile: BackgroundCompile | None = None
        self.step_ready = threading.Event()  # set once the scheduler runs the compiled decode step
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
            job, self._compile = self._compile, None
            if job is not None:
                job.cancel()
            return
        self.stage = "starting the scheduler"
        scheduler.run(ready=lambda: _call_soon(loop, settle, (scheduler, tokenizer), None))

    def _load_blocking(self, path: Path) -> tuple[Scheduler, Tokenizer]:
        """Load and prepare the model; it serves eagerly from here on. The compiled decode step follows in the
        background (``engine.compile.BackgroundCompile``: the stored step in about a second, or a build in a
        child process — about 4 minutes on two cores for SmolLM2) and the scheduler swaps it in between two
        steps. Only ``compile = "on"`` waits for it here, and fails the load without it."""
        from engine.compile import BackgroundCompile, CompileFailed, ModelRecipe
        from engine.scheduler import Scheduler

        max_seq = int(self._max_seq) if self._max_seq else DEFAULT_CONTEXT
        recipe = ModelRecipe(str(path), self.dtype, max_seq, self.max_batch, self.quantize, str(kernel_cache_dir()))
        self.stage = f"loading {path.name}"
        loaded, prepared = recipe.build()
        self.context_length = min(max_seq, loaded.config.max_seq_len)
        self.meta = {"source": loaded.source, "arch": loaded.config.arch, **_plain(loaded.meta)}
        if prepared is not None:
            self.meta["kernels"] = _plain(prepared)
        scheduler = Scheduler(
            loaded.model, loaded.tokenizer, self.max_batch, max_queue=self.max_queue, max_seq=self.context_length
        )
        self.meta["compiled"] = False if self.compile == "off" else "pending"
        if self.compile == "off":
            self.meta["compile_reason"] = "off"
        else:
            job = BackgroundCompile(
                loaded.model,
                recipe,
                step_cache_dir() / _artifact_name(path),
                lambda step: scheduler.set_decode_step(step, applied=lambda: self._step_applied(job)),
                batch_sizes=(1, min(2, self.max_batch)),
                inductor_cache=compile_cache_dir(),
            )
            self._compile = job.start()
            if self.compile == "on" and not job.wait():
                job.cancel()
                raise CompileFailed(f"cannot compile the decode step: {job.reason}")
        log.info(
            "loaded %s (%s), context %d, max_batch %d, decode step %s",
            path,
            loaded.config.arch,
            self.context_length,
            self.max_batch,
            "eager (compile off)" if self.compile == "off" else "eager until the compiled step is ready",
        )
        return scheduler, loaded.tokenizer

    def _step_applied(self, job: BackgroundCompile) -> None:
        """On the engine thread, once the scheduler runs the compiled step."""
        self.meta["compiled"] = True
        self.step_ready.set()
        how = "loaded from the stored artifact" if job.report.get("source") == "artifact" else "built"
        log.info(
            "decode step compiled in %s s (%s): %s",
            job.report.get("build_s", job.report.get("load_s")),
            how,
            job.report,
        )

    def compile_state(self) -> dict[str, Any]:
        """Where the compiled decode step stands: ``compiled`` is ``pending``, ``compiling``, True or False (with
        ``compile_reason``); the details of how it was made or why it was rebuilt."""
        job = self._compile
        if job is None:
            return {}
        state: dict[str, Any] = {}
        if self.meta.get("compiled") is not True:
            state["compiled"] = "pending" if job.state is True else job.state  # True: handed over, not yet run
        if job.state is False:
            state["compile_reason"] = job.reason
        for field in ("source", "build_s", "load_s", "rebuilt_because"):
            if field in job.report:
                state[f"compile_{field}"] = job.report[field]
        return state

    async def unload(self) -> None:
        scheduler, self.scheduler = self.scheduler, None
        thread, self._thread = self._thread, None
        self._abandoned.set()
        job, self._compile = self._compile, None
        if job is not None:
            await asyncio.to_thread(job.cancel)
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

    def prepare_chat(self, messages: list[dict[str, str]]) -> Prompt:
        tok = self._tok()
        text = tok.apply_chat_template(messages, add_generation_prompt=True)
        ids = tok.encode(text, add_bos=tok.add_bos)
        return Prompt(messages, len(ids), text, ids)

    def generate(self, prompt: str, sampling: dict[str, Any]) -> Generation:
        tok = self._tok()
        return self._submit(tok.encode(prompt, add_bos=tok.add_bos), sampling)

    def chat(self, prompt: Prompt, sampling: dict[str, Any]) -> Generation:
        if prompt.ids is None:
            return super().chat(prompt, sampling)
        return self._submit(prompt.ids, sampling)

    def _submit(self, ids: list[int], sampling: dict[str, Any]) -> Generation:
        from engine.sampling import SamplingParams

        if self.scheduler is None:
            raise RuntimeError("the model is not loaded")
        params = SamplingParams(**complete_sampling(sampling))
        handle = self.scheduler.submit(ids, params)
        gen = Generation(model=self.model, loop=asyncio.get_running_loop(), prompt_tokens=len(ids))
        gen.on_cancel = handle.cancel
        handle.listen(_listener(gen))
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
            **self.compile_state(),
        }


def compile_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels between starts, in the cache directory (``bus.paths``)."""
    return paths.cache_dir() / "inductor"


def kernel_cache_dir() -> Path:
    """Where the engine's own CPU kernels are built (``engine.kernels``), in the cache directory."""
    return paths.cache_dir() / "kernels"


def step_cache_dir() -> Path:
    """Where compiled decode steps (AOTInductor packages) are kept, beside Inductor's cache."""
    return compile_cache_dir().parent / "aot"


def _artifact_name(path: Path) -> str:
    """One directory per model file: its name, and a hash of its full path so two files of one name differ."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return f"{path.name}-{digest}"


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
