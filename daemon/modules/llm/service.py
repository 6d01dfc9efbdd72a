"""The LLM handlers: ``llm.generate``, ``llm.chat`` and ``llm.stats`` over whichever backend is loaded.

Every generation goes through ``_stream``: it forwards text deltas as chunks, and when the caller cancels or
vanishes (the transport cancels the handler task) it cancels the generation so the backend frees the slot at
its next decode step. ``llm.chat`` fits the conversation into the model's context window first and reports
what it dropped in the usage; the chat module builds on it through the hub, so it never needs to know which
backend is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from bus.errors import BadRequest, BusError, Busy, Unavailable
from bus.sampling import DEFAULT_MAX_TOKENS, SAMPLING_PROPERTIES, check_sampling, merge_sampling, pick_sampling
from bus.service import Call
from daemon.module import method
from daemon.modules.llm.base import Backend, Generation, as_bus_error
from daemon.modules.llm.context import fit_context, reply_reserve
from daemon.topics import LLM_STATE

log = logging.getLogger("enigma.llm")

# {"state": "standby"|"loading"|"ready"|"busy"|"failed"|"unloaded", "backend", "model", "queue", "active",
#  "error"?}; "standby" = configured to load at the first request and not loaded yet.

GENERATE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "maxLength": 1_000_000},
        **SAMPLING_PROPERTIES,
    },
    "required": ["prompt"],
}
MESSAGE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "user", "assistant"]},
        "content": {"type": "string", "maxLength": 1_000_000},
    },
    "required": ["role", "content"],
}
CHAT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": MESSAGE_SCHEMA, "minItems": 1, "maxItems": 10_000},
        **SAMPLING_PROPERTIES,
    },
    "required": ["messages"],
}
EMPTY_SCHEMA: Final[dict[str, Any]] = {"type": "object"}


@dataclass
class Counters:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LLMService:
    """Handlers bound to one backend; ``publish`` sends hub events (``llm.state``)."""

    def __init__(
        self,
        backend: Backend,
        publish: Callable[[str, dict[str, Any]], None],
        *,
        defaults: dict[str, Any] | None = None,
        max_pending: int = 256,
        preload: bool = True,
    ) -> None:
        self.backend = backend
        self.publish = publish
        self.defaults = merge_sampling({"max_tokens": DEFAULT_MAX_TOKENS}, defaults)
        self.max_pending = max_pending
        self.counters = Counters()
        self.inflight = 0
        self.state = "unloaded"
        self.error: str | None = None
        self._switching = asyncio.Lock()
        self.lazy = not preload
        self._load_task: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the backend now, or (``preload=False``) at the first request that needs it."""
        if self.lazy:
            self._set_state("standby")
        else:
            await self._load()

    async def _load(self) -> None:
        self._set_state("loading")
        try:
            await self.backend.load()
        except asyncio.CancelledError:
            self._set_state("failed", "load cancelled")
            raise
        except Exception as exc:
            err = as_bus_error(exc)
            self._set_state("failed", err.message)
            raise err from exc
        self._set_state("ready")

    async def _ensure_loaded(self) -> None:
        """Standby: the first caller starts the load, every caller waits for the same one (a failed lazy
        load is retried by the next request)."""
        if self.state not in ("standby", "failed") or not self.lazy:
            return
        if self._load_task is None or self._load_task.done():
            self._load_task = asyncio.create_task(self._load(), name="llm-load")
        try:
            await asyncio.shield(self._load_task)
        except BusError as exc:
            raise Unavailable(f"the model could not be loaded: {exc.message}") from exc

    async def switch(self, backend: Backend) -> None:
        """Replace the backend with ``backend`` (loaded first; the old one serves until the new one is ready).

        Generations still running on the old backend end as ``cancelled`` when it unloads. A failed load
        leaves the old backend in place and raises.
        """
        async with self._switching:
            old_state = self.state
            self._set_state("loading")
            try:
                await backend.load()
            except BaseException as exc:
                self._set_state(old_state)
                if isinstance(exc, Exception):
                    raise as_bus_error(exc) from exc
                raise
            old, self.backend = self.backend, backend
            self._set_state("busy" if self.inflight else "ready")
            await old.unload()

    async def stop(self) -> None:
        task, self._load_task = self._load_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BusError):
                await task
        try:
            await self.backend.unload()
        finally:
            self._set_state("unloaded")

    def state_body(self) -> dict[str, Any]:
        # Counted here, not by the backend: a cancelled request leaves our count at once, while the backend
        # notices at its next step; ``ready`` must not be announced with a stale ``active: 1``.
        queue = min(self.backend.load_stats()["queue"], self.inflight)
        body: dict[str, Any] = {
            "state": self.state,
            "backend": self.backend.kind,
            "model": self.backend.model,
            "queue": queue,
            "active": self.inflight - queue,
        }
        if self.error:
            body["error"] = self.error
        return body

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        self.publish(LLM_STATE, self.state_body())

    def _activity_changed(self) -> None:
        if self.state in ("ready", "busy"):
            self._set_state("busy" if self.inflight else "ready")

    # -- handlers ---------------------------------------------------------------------------------------------
    @method("llm.generate", stream=True, schema=GENERATE_SCHEMA)
    async def handle_generate(self, call: Call) -> dict[str, Any]:
        """Stream a completion of a raw prompt (no chat template): chunks ``{"text"}``, end ``{"usage"}``."""
        sampling = self._sampling(call.body)
        return await self._stream(call, lambda: self.backend.generate(call.body["prompt"], sampling))

    @method("llm.chat", stream=True, schema=CHAT_SCHEMA)
    async def handle_chat(self, call: Call) -> dict[str, Any]:
        """Stream the assistant's reply to ``messages`` (chat template applied, context window fitted)."""
        sampling = self._sampling(call.body)
        messages = [{"role": m["role"], "content": m["content"]} for m in call.body["messages"]]
        if messages[-1]["role"] == "assistant":
            raise BadRequest("llm.chat: the last message must be from the user or the system, not the assistant")
        await self._ensure_loaded()
        self._check_ready()
        window = self.backend.context_length
        reserve = reply_reserve(window, sampling["max_tokens"])
        backend = self.backend
        # Each candidate is rendered and tokenized once; the one that fits is what the model runs.
        fitted = await asyncio.to_thread(
            fit_context, messages, backend.prepare_chat, window, reserve, lambda p: p.tokens
        )
        # What is left of the window after the prompt bounds the reply (the reserve guarantees at least that).
        sampling["max_tokens"] = max(1, min(sampling["max_tokens"], window - fitted.prompt_tokens))
        end = await self._stream(call, lambda: backend.chat(fitted.prompt, sampling))
        end["usage"]["context"] = fitted.usage()
        return end

    @method("llm.stats", access="device", schema=EMPTY_SCHEMA)
    async def handle_stats(self, call: Call) -> dict[str, Any]:
        """Counts since the backend was loaded (queue, active, completed, cancelled, failed, tokens) and the
        sampling defaults requests start from."""
        c = self.counters
        return {
            **self.state_body(),
            "requests": c.requests,
            "completed": c.completed,
            "cancelled": c.cancelled,
            "failed": c.failed,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "context_length": self.backend.context_length,
            "sampling": self.defaults,
        }

    # -- the one streaming path -------------------------------------------------------------------------------
    def _sampling(self, body: dict[str, Any]) -> dict[str, Any]:
        # The hub's schema has checked the request's keys already, but a JSON schema lets NaN through.
        return check_sampling(merge_sampling(self.defaults, pick_sampling(body)))

    def _check_ready(self) -> None:
        if self.state not in ("ready", "busy") and not (self.state == "loading" and self._switching.locked()):
            raise Unavailable(f"the LLM backend is {self.state}{': ' + self.error if self.error else ''}")

    async def _stream(self, call: Call, start: Callable[[], Generation]) -> dict[str, Any]:
        await self._ensure_loaded()
        self._check_ready()
        if self.inflight >= self.max_pending:
            raise Busy(f"{self.inflight} generations are already running or queued (limit {self.max_pending})")
        try:
            gen = start()
        except Exception as exc:
            raise as_bus_error(exc) from exc
        self.counters.requests += 1
        self.inflight += 1
        self._activity_changed()
        try:
            counted = 0
            async for delta in gen:
                # ``tokens``: how many generated tokens the delta stands for (a character may need several).
                tokens, counted = gen.tokens - counted, gen.tokens
                await call.emit({"text": delta, "tokens": tokens})
        except asyncio.CancelledError:
            gen.cancel()
            self.counters.cancelled += 1
            self.counters.completion_tokens += gen.tokens
            raise
        except Exception:
            gen.cancel()
            self.counters.failed += 1
            raise
        finally:
            self.inflight -= 1
            self._activity_changed()
        usage = gen.usage
        assert usage is not None
        if usage.finish_reason == "cancelled":
            self.counters.cancelled += 1
        else:
            self.counters.completed += 1
        self.counters.prompt_tokens += usage.prompt_tokens
        self.counters.completion_tokens += usage.completion_tokens
        return {"usage": usage.to_dict()}
