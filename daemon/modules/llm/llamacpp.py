"""llama.cpp (through llama-cpp-python, the ``llamacpp`` extra) as a backend for GGUF models.

A ``Llama`` object is not thread-safe and decodes one sequence at a time, so generations run one after
another on one worker thread, in submission order; ``load_stats`` reports the queue. Cancelling sets a flag
the worker checks between tokens. The package is imported only when the backend loads, so the daemon runs
without it (and the module then fails to load with an error saying which extra to install).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from bus.errors import BadRequest, TooLarge, Unavailable
from bus.sampling import complete_sampling
from daemon.modules.llm.base import Backend, Generation
from daemon.modules.llm.native import resolve_model_path

log = logging.getLogger("enigma.llm.llamacpp")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class LlamaCppBackend(Backend):
    """Options (``[modules.llamacpp]``): ``model`` (a GGUF in the store, or a path; the packaged default when
    empty), ``context_length`` (default 2048), ``threads`` (llama.cpp's default when unset)."""

    kind: ClassVar[str] = "llamacpp"

    def __init__(self, model: str, options: dict[str, Any], data_dir: Path) -> None:
        super().__init__(model or "default", options)
        self.data_dir = data_dir
        self.threads = options.get("threads")
        self.path: Path | None = None
        self._llm: Any = None
        self._formatter: Any = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self._waiting = 0
        self._active = 0
        self._lock = threading.Lock()

    async def load(self) -> None:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise Unavailable(
                "llama-cpp-python is not installed; install the extra with: pip install 'enigma[llamacpp]'"
            ) from exc
        self.path = await asyncio.to_thread(resolve_model_path, self.model, self.data_dir)
        if self.path.is_dir() or self.path.suffix != ".gguf":
            raise BadRequest(f"llama.cpp runs GGUF files only; {self.path} is not one")
        loop = asyncio.get_running_loop()
        self._llm = await loop.run_in_executor(self._worker, self._load_blocking, self.path)

    def _load_blocking(self, path: Path) -> Any:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        kwargs: dict[str, Any] = {"n_ctx": self.context_length, "verbose": False}
        if self.threads:
            kwargs["n_threads"] = int(self.threads)
        llm = Llama(model_path=str(path), **kwargs)
        meta = llm.metadata
        eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
        bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
        template = meta.get("tokenizer.chat_template") or CHATML
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        log.info("loaded %s with llama.cpp, context %d", path, self.context_length)
        return llm

    async def unload(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(self._worker, llm.close)
        self._worker.shutdown(wait=False, cancel_futures=True)

    def count_tokens(self, text: str) -> int:
        return len(self._model().tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        self._model()
        return str(self._formatter(messages=messages).prompt)

    def _model(self) -> Any:
        if self._llm is None:
            raise Unavailable("the llama.cpp model is not loaded")
        return self._llm

    def generate(self, prompt: str, sampling: dict[str, Any]) -> Generation:
        llm = self._model()
        s = complete_sampling(sampling)
        cancel = threading.Event()
        gen = Generation(model=self.model, loop=asyncio.get_running_loop(), on_cancel=cancel.set)
        with self._lock:
            self._waiting += 1
        self._worker.submit(self._run, llm, gen, cancel, prompt, s)
        return gen

    def _run(self, llm: Any, gen: Generation, cancel: threading.Event, prompt: str, s: dict[str, Any]) -> None:
        with self._lock:
            self._waiting -= 1
            self._active += 1
        try:
            if cancel.is_set():
                gen.finish("cancelled", 0, 0)
                return
            ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            if len(ids) + s["max_tokens"] > self.context_length:
                raise TooLarge(
                    f"prompt ({len(ids)} tokens) + max_tokens ({s['max_tokens']}) exceeds the context length "
                    f"{self.context_length}; shorten the prompt or lower max_tokens"
                )
            stream = llm.create_completion(
                ids,
                max_tokens=s["max_tokens"],
                temperature=s["temperature"],
                top_p=s["top_p"],
                top_k=s["top_k"],
                min_p=s["min_p"],
                repeat_penalty=s["repetition_penalty"],
                presence_penalty=s["presence_penalty"],
                frequency_penalty=s["frequency_penalty"],
                seed=s["seed"],
                stop=s["stop"],
                stream=True,
            )
            n, reason = 0, "stop"
            for chunk in stream:
                choice = chunk["choices"][0]
                if choice.get("text"):
                    n += 1
                    gen.feed(choice["text"])
                if choice.get("finish_reason"):
                    reason = "length" if choice["finish_reason"] == "length" else "stop"
                if cancel.is_set():
                    stream.close()
                    gen.finish("cancelled", len(ids), n)
                    return
            gen.finish(reason, len(ids), n)
        except Exception as exc:
            gen.fail(exc)
        finally:
            with self._lock:
                self._active -= 1

    def load_stats(self) -> dict[str, int]:
        with self._lock:
            return {"queue": self._waiting, "active": self._active}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "path": str(self.path) if self.path else None}
