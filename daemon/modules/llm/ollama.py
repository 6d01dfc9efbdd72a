"""A running Ollama server as an LLM backend, over its HTTP API (``/api/chat``, ``/api/generate``, ``/api/tags``).

Ollama streams NDJSON: one object per token batch (``message.content`` for chat, ``response`` for generate),
the last with ``done: true``, the token counts and ``done_reason``. Dropping the connection stops Ollama's
generation, so that is how ``cancel()`` is implemented. Token counts for the context window are estimated
(Ollama has no tokenize endpoint); ``num_ctx`` is sent so Ollama uses the same window we fit to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar, Final

from bus.errors import NotFound, Unavailable
from bus.sampling import DEFAULT_MAX_TOKENS
from daemon.modules.llm.base import Backend, Generation, Prompt
from daemon.modules.llm.httpjson import Endpoint, JsonStream, request_json

log = logging.getLogger("enigma.llm.ollama")

DEFAULT_URL: Final = "http://127.0.0.1:11434"
# Our sampling keys → Ollama's option names.
_OPTION_NAMES: Final = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "max_tokens": "num_predict",
    "stop": "stop",
}


def ollama_options(sampling: dict[str, Any], context_length: int) -> dict[str, Any]:
    opts = {_OPTION_NAMES[k]: v for k, v in sampling.items() if k in _OPTION_NAMES}
    opts.setdefault("num_predict", DEFAULT_MAX_TOKENS)
    opts["num_ctx"] = context_length
    return opts


async def list_models(url: str, limit_s: float = 10.0) -> list[dict[str, Any]]:
    """The models the Ollama server has pulled (``/api/tags``)."""
    answer = await request_json(Endpoint.parse(url), "GET", "/api/tags", None, limit_s)
    models = answer.get("models", [])
    return [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []


class OllamaBackend(Backend):
    kind: ClassVar[str] = "ollama"

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        super().__init__(model, options)
        self.url = str(options.get("url", DEFAULT_URL))
        self.endpoint = Endpoint.parse(self.url)
        self.timeout = float(options.get("timeout", 30.0))
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """Check that the server answers and has the model; Ollama itself loads it on first use."""
        try:
            names = {m.get("name") for m in await list_models(self.url, self.timeout)}
        except Unavailable as exc:
            raise Unavailable(f"Ollama at {self.url} is not reachable: {exc.message}") from exc
        if self.model not in names and f"{self.model}:latest" not in names:
            known = ", ".join(sorted(str(n) for n in names)) or "none"
            raise NotFound(f"Ollama at {self.url} has no model {self.model!r} (it has: {known}); `ollama pull` it")

    async def unload(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def count_tokens(self, text: str) -> int:
        # Ollama has no tokenize endpoint; ~4 characters per token is the usual estimate for English.
        return len(text) // 4 + 1

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>\n{m['content']}\n" for m in messages) + "<assistant>\n"

    def prepare_chat(self, messages: list[dict[str, str]]) -> Prompt:
        # /api/chat renders the template itself: the messages travel as they are, measured by estimate.
        return Prompt(messages, sum(self.count_tokens(m["content"]) + 4 for m in messages))

    def load_stats(self) -> dict[str, int]:
        return {"queue": 0, "active": len(self._tasks)}

    def info(self) -> dict[str, Any]:
        return {**super().info(), "url": self.url}

    def generate(self, prompt: str, sampling: dict[str, Any]) -> Generation:
        body = {
            "model": self.model,
            "prompt": prompt,
            "raw": True,
            "stream": True,
            "options": ollama_options(sampling, self.context_length),
        }
        return self._start("/api/generate", body, "response", self.count_tokens(prompt))

    def chat(self, prompt: Prompt, sampling: dict[str, Any]) -> Generation:
        body = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in prompt.messages],
            "stream": True,
            "options": ollama_options(sampling, self.context_length),
        }
        return self._start("/api/chat", body, "message", prompt.tokens)

    def _start(self, path: str, body: dict[str, Any], field: str, prompt_estimate: int) -> Generation:
        gen = Generation(model=self.model, loop=asyncio.get_running_loop(), prompt_tokens=prompt_estimate)
        task = asyncio.create_task(self._run(gen, path, body, field), name=f"ollama{path}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def cancel() -> None:
            task.cancel()

        gen.on_cancel = cancel
        return gen

    async def _run(self, gen: Generation, path: str, body: dict[str, Any], field: str) -> None:
        try:
            async with JsonStream(self.endpoint, "POST", path, body, self.timeout) as stream:
                async for obj in stream.lines():
                    piece = obj.get(field)
                    text = piece.get("content", "") if isinstance(piece, dict) else piece
                    if isinstance(text, str) and text:
                        gen.feed(text)
                    if obj.get("done"):
                        reason = obj.get("done_reason") or "stop"
                        gen.finish(
                            "length" if reason == "length" else "stop",
                            obj.get("prompt_eval_count"),
                            obj.get("eval_count"),
                        )
                        return
            gen.fail(Unavailable(f"Ollama at {self.url} ended the stream without done=true"))
        except asyncio.CancelledError:
            gen.finish("cancelled")
            raise
        except Exception as exc:
            gen.fail(exc)
