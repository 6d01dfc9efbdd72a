"""The one interface every LLM backend implements, and the stream type its generations share.

A backend turns a prompt (raw text, or chat messages it renders with the model's template) into a
``Generation``: an async iterator of text deltas living on the daemon's event loop, fed from wherever the
backend really runs (the engine's scheduler thread, an HTTP stream, a llama.cpp worker thread). It is the one
bridge from those threads to the loop, thread-safe by construction: a producer only calls ``feed``/``finish``/
``fail``, which hand an immutable item to the loop with ``call_soon_threadsafe`` (the loop never waits on them),
and everything the consumer reads — text, token counts, timings — is built from those items on the loop.
``cancel()`` asks the producer to stop at its next step; the stream then ends with ``finish_reason ==
"cancelled"``. The usage is ``engine.usage.Usage``: a runtime that times itself (the native engine, from the
moment a request is submitted) hands its own to ``finish``; for the others it is measured here, on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from bus.errors import BusError, InternalError, error_class
from engine.usage import Usage, decode_rate


def as_bus_error(exc: BaseException) -> BusError:
    """Map an engine (or backend) exception to its bus twin by its ``code``; anything else is internal.

    Engine errors carry a bus error code as a plain string (the engine may not import ``bus``); this is the
    one place the daemon turns them into the typed exception the transport answers with.
    """
    if isinstance(exc, BusError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        details = getattr(exc, "details", None)
        return error_class(code)(getattr(exc, "message", str(exc)), details if isinstance(details, dict) else None)
    return InternalError(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True, slots=True)
class Item:
    """One thing a producer says, handed whole to the loop."""

    kind: str  # "text" | "done" | "error"
    text: str = ""
    tokens: int = 0
    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage: Usage | None = None  # the runtime's own account, preferred to the loop's timing
    error: BaseException | None = None


@dataclass
class Generation:
    """A running generation consumed with ``async for delta in gen``; ``usage`` is set once it ends.

    The queue needs no explicit bound: a producer puts at most ``max_tokens`` deltas and one end item.
    """

    model: str
    loop: asyncio.AbstractEventLoop
    prompt_tokens: int = 0
    on_cancel: Callable[[], None] | None = None
    usage: Usage | None = None
    text: str = ""
    tokens: int = 0
    _queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    _t0: float = field(default_factory=time.perf_counter)
    _t_first: float | None = None
    _t_last: float | None = None
    _cancel_requested: bool = False
    _finished: bool = False

    # -- producer side: safe from any thread -------------------------------------------------------------
    def feed(self, text: str, tokens: int = 1) -> None:
        """A decoded text delta (``tokens`` is how many tokens produced it)."""
        self._put(Item("text", text=text, tokens=tokens))

    def finish(
        self,
        finish_reason: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        """The end; ``usage``, when the runtime timed the request itself, replaces what the loop measured."""
        self._put(
            Item(
                "done",
                finish_reason=finish_reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                usage=usage,
            )
        )

    def fail(self, error: BaseException) -> None:
        self._put(Item("error", error=error))

    def _put(self, item: Item) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._queue.put_nowait(item)
        else:
            # The loop may already be closed during shutdown; the item then has no reader anyway.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    # -- consumer side: on the loop ----------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        """Ask the producer to stop at its next step; idempotent, safe after the end."""
        if self._finished or self._cancel_requested:
            return
        self._cancel_requested = True
        if self.on_cancel is not None:
            self.on_cancel()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> str:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        now = time.perf_counter()
        if item.kind == "text":
            if self._t_first is None:
                self._t_first = now
            self._t_last = now
            self.text += item.text
            self.tokens += item.tokens
            return item.text
        self._finished = True
        if item.kind == "error":
            self._end("error", None, None, now)
            err = item.error
            assert err is not None
            raise as_bus_error(err) from err
        reason = "cancelled" if self._cancel_requested and item.finish_reason != "error" else item.finish_reason
        if item.usage is not None:
            self.usage = replace(item.usage, model=self.model, finish_reason=reason or item.usage.finish_reason)
        else:
            self._end(reason or "stop", item.prompt_tokens, item.completion_tokens, now)
        raise StopAsyncIteration

    def _end(self, reason: str, prompt_tokens: int | None, completion_tokens: int | None, now: float) -> None:
        completion = completion_tokens if completion_tokens is not None else self.tokens
        self.usage = Usage(
            model=self.model,
            prompt_tokens=prompt_tokens if prompt_tokens is not None else self.prompt_tokens,
            completion_tokens=completion,
            finish_reason=reason,
            ttft_ms=None if self._t_first is None else (self._t_first - self._t0) * 1000.0,
            total_ms=(now - self._t0) * 1000.0,
            decode_tokens_per_s=decode_rate(completion, self._t_first, self._t_last),
        )

    async def drain(self) -> str:
        """Consume to the end and return the whole text (for callers that do not stream)."""
        async for _ in self:
            pass
        return self.text


@dataclass(frozen=True, slots=True)
class Prompt:
    """A chat prompt as the backend will run it, rendered and measured once: ``llm.chat`` measures candidates
    while it fits the conversation into the window, then runs the one that fits as it is."""

    messages: list[dict[str, str]]
    tokens: int  # exact, or the backend's estimate when it cannot count
    text: str | None = None  # the chat template applied, for backends that render
    ids: list[int] | None = None  # the tokens, for backends that tokenize here


class Backend(ABC):
    """One LLM runtime serving one model at a time.

    ``load``/``unload`` may take long (they run their blocking parts off the loop). ``count_tokens``,
    ``render_chat`` and ``prepare_chat`` are cheap and synchronous; remote backends that cannot count estimate.
    """

    kind: ClassVar[str]

    def __init__(self, model: str, options: dict[str, Any]) -> None:
        self.model = model  # the name or path the user configured
        self.options = options
        self.context_length = int(options.get("context_length", 2048))
        # What load() is doing now ("loading SmolLM2-135M-Instruct"), for sys.status while the model comes up;
        # a plain attribute, so an engine thread may set it and the loop read it.
        self.stage = ""

    @abstractmethod
    async def load(self) -> None: ...

    @abstractmethod
    async def unload(self) -> None: ...

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    @abstractmethod
    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to ``messages``, ending with the assistant's turn opened."""

    @abstractmethod
    def generate(self, prompt: str, sampling: dict[str, Any]) -> Generation:
        """Start generating from a raw prompt; must return immediately (the work happens elsewhere)."""

    def prepare_chat(self, messages: list[dict[str, str]]) -> Prompt:
        """Render ``messages`` and measure the result; backends that tokenize keep the tokens too."""
        text = self.render_chat(messages)
        return Prompt(messages, self.count_tokens(text), text)

    def chat(self, prompt: Prompt, sampling: dict[str, Any]) -> Generation:
        """Start a chat completion of a prepared prompt; backends with a native chat API override this."""
        return self.generate(prompt.text if prompt.text is not None else self.render_chat(prompt.messages), sampling)

    def count_chat_tokens(self, messages: list[dict[str, str]]) -> int:
        return self.prepare_chat(messages).tokens

    def load_stats(self) -> dict[str, int]:
        """``{"queue": waiting, "active": decoding}`` right now."""
        return {"queue": 0, "active": 0}

    def info(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model, "context_length": self.context_length}
