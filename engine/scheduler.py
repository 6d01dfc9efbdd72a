"""Continuous batching: many generations share each decode step of one model on one worker thread.

Requests join and leave between steps. New requests take the free cache rows after the active ones. Prompts
that arrived together and fit one chunk are prefilled together, in one forward call (one call's overhead
instead of one per request: a burst of 8 short prompts is one step, not 8); a longer prompt is prefilled
alone, one chunk per step, so it delays the others' next token by one chunk, not by the whole prompt.
Then every active row advances in one batched forward call, each sampled with its own settings and RNG. A
finished or cancelled row leaves and the last row is moved into its place (``Transformer.move_slot``), so the
active rows are always ``[0, n)`` and the decode call never carries holes.

Results travel to the consumer through the request's handle: a blocking iterator for threads, or a listener
the worker calls with each event as it is produced (the daemon's listener hands them to its event loop). The
worker never waits on a consumer, and a consumer never reads the worker's state: every event carries what it
needs, the number of tokens a text delta stands for included.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.generate import DEFAULT_PREFILL_CHUNK, Decoding, TokenizerLike, check_prompt, decode_step, prefill_chunk
from engine.model import Transformer
from engine.sampling import BatchSettings, SamplingParams, sample_batch
from engine.usage import Usage

if TYPE_CHECKING:
    from engine.compile import StepFn

log = logging.getLogger(__name__)

Event = str | Usage


class Busy(EngineError):
    """The waiting queue is full: the caller should retry later."""

    code = "busy"


class SchedulerStopped(EngineError):
    code = "unavailable"


class GenerationFailed(EngineError):
    """The model raised during a step; every request in that step ends with this error."""

    code = "internal"


# Called on the worker thread with each event and the number of completion tokens it stands for (a text delta
# may cover several tokens, or a token may wait for the next one to complete a character; other events: 0).
Listener = Callable[[Event | BaseException, int], None]


class RequestHandle:
    """The consumer's end of one request: events are text deltas (``str``), then one final ``Usage``.

    Consume either with the blocking iterator (any thread) or with a listener (``listen``); not both. Each
    request yields at most ``max_tokens + 1`` events, which bounds the handle's queue.
    """

    def __init__(self, rid: int, state: Decoding) -> None:
        self.id = rid
        self.state = state  # the worker's: a consumer reads the events, not this
        self.usage: Usage | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._sync: queue.SimpleQueue[tuple[Event | BaseException, int]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._listener: Listener | None = None
        self._reported = 0  # completion tokens covered by the deltas emitted so far (worker side only)

    # -- consumer side ------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the worker to end this request at its next step (the stream then ends with ``cancelled``)."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev, _ = self._sync.get()
            if isinstance(ev, BaseException):
                raise ev
            yield ev
            if isinstance(ev, Usage):
                return

    def listen(self, listener: Listener) -> None:
        """Hand every event to ``listener``: those already produced at once, in order, on the calling thread;
        the rest on the worker thread as they come. The listener must not block (it holds up the batch)."""
        with self._lock:
            while True:
                try:
                    listener(*self._sync.get_nowait())
                except queue.Empty:
                    break
            self._listener = listener

    def collect(self, timeout: float | None = None) -> tuple[str, Usage]:
        """Block until the request ends; its whole text and usage (raises its error, or TimeoutError)."""
        parts: list[str] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ev, _ = self._sync.get(timeout=left)
            except queue.Empty:
                raise TimeoutError(f"request {self.id} not finished after {timeout}s") from None
            if isinstance(ev, BaseException):
                raise ev
            if isinstance(ev, Usage):
                return "".join(parts), ev
            parts.append(ev)

    # -- worker side --------------------------------------------------------------------------------------------
    def _emit(self, ev: Event | BaseException) -> None:
        tokens = 0
        if isinstance(ev, str):
            done = len(self.state.completion)
            tokens, self._reported = done - self._reported, done
        elif isinstance(ev, Usage):
            self.usage = ev
        else:
            self.error = ev
        with self._lock:
            if self._listener is not None:
                self._listener(ev, tokens)
            else:
                self._sync.put((ev, tokens))
        if isinstance(ev, Usage | BaseException):
            self.done.set()


@dataclass
class _Row:
    handle: RequestHandle
    prefilled: int = 0  # prompt tokens already in the cache

    @property
    def state(self) -> Decoding:
        return self.handle.state

    @property
    def cached(self) -> int:
        """Positions of this row that hold keys/values (what a move must copy)."""
        return self.state.position if self.state.completion else self.prefilled


class Scheduler:
    """Runs one model for many concurrent requests on its own worker thread (see the module docstring)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: TokenizerLike,
        max_batch: int = 8,
        *,
        max_queue: int = 64,
        max_seq: int | None = None,
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ) -> None:
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be >= 1, max_queue >= 0")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        info = model.cache_info
        want_seq = min(max_seq or model.config.max_seq_len, model.config.max_seq_len)
        if info.max_batch < max_batch or info.max_seq != want_seq:
            model.setup_cache(max_batch, want_seq)
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._waiting: deque[RequestHandle] = deque()
        # rows[i] lives in cache row i: decoding rows first, then the admitted rows still to prefill (of which only
        # the first can hold a partial prompt: the others have nothing cached yet).
        self._rows: list[_Row] = []
        self._n_dec = 0
        self._running = False
        self._thread: threading.Thread | None = None  # ours, when start() made one
        self._serving_thread: threading.Thread | None = None
        self._done = threading.Event()
        self._done.set()
        self._settings_key: tuple[int, ...] = ()
        self._settings: BatchSettings | None = None
        self._stats = {
            "completed": 0,
            "cancelled": 0,
            "failed": 0,
            "tokens_generated": 0,
            "prefill_tokens": 0,
            "prefill_calls": 0,
        }
        self._steps = 0
        self._batch_sum = 0
        # The compiled decode step (engine.compile) the decode steps run through, or None for the eager forward;
        # one handed over by another thread (set_decode_step) waits in _new_step for the worker to apply it.
        self.decode_step: StepFn | None = None
        self._new_step: tuple[StepFn | None, Callable[[], None] | None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        """Serve on a new worker thread. Prefer ``run`` on the thread that loaded the model (see there)."""
        with self._cv:
            if self._running:
                return self
            self._running = True
            self._done.clear()
        self._thread = threading.Thread(target=self._run, name="engine-scheduler", daemon=True)
        self._thread.start()
        return self

    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Serve on the calling thread until ``stop``; ``ready()`` is called once requests are accepted.

        Why a caller would: every thread that runs a parallel torch op gets its own OpenMP team, and once the
        teams hold more threads than there are CPUs, libgomp stops spin-waiting between ops and sleeps on a
        futex instead. Loading a model on one thread and decoding on another so costs a third of the decode
        speed on a 2-core box (14.5 → 22 ms per token measured on SmolLM2). Loading, compiling and serving on
        one thread keeps one team.
        """
        with self._cv:
            if self._running:
                raise RuntimeError("the scheduler is already serving")
            self._running = True
            self._done.clear()
            self._serving_thread = threading.current_thread()
            handed, self._new_step = self._new_step, None
        if handed is not None:  # a step handed over before serving began is in place before the first request
            self.decode_step = handed[0]
            if handed[1] is not None:
                handed[1]()
        if ready is not None:
            ready()
        self._run()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving: requests still queued or running end as ``cancelled``. Waits up to ``timeout`` for
        the serving thread to finish its step (not when called from that thread)."""
        with self._cv:
            self._running = False
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        elif self._serving_thread is not None and self._serving_thread is not threading.current_thread():
            self._done.wait(timeout)

    def __enter__(self) -> Scheduler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- requests -----------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> RequestHandle:
        """Queue a request; raises ``ContextOverflow``/``InvalidPrompt`` (bad input), ``Busy`` (queue full) or
        ``SchedulerStopped``."""
        if not self._running:
            raise SchedulerStopped("the generation scheduler is not running")
        check_prompt(self.model, prompt_ids, params.max_tokens)
        state = Decoding(self.tokenizer, prompt_ids, params, self.model.config.vocab_size)
        with self._cv:
            if not self._running:
                raise SchedulerStopped("the generation scheduler is not running")
            if len(self._waiting) >= self.max_queue:
                raise Busy(f"the generation queue is full ({self.max_queue} waiting); try again later")
            handle = RequestHandle(next(self._ids), state)
            self._waiting.append(handle)
            self._cv.notify()
        return handle

    def set_decode_step(
        self,
        step: StepFn | None,
        applied: Callable[[], None] | None = None,
    ) -> None:
        """Serve the decode steps with a new compiled step (``engine.compile``; None: eager) from any thread.

        The worker swaps it in at the top of its loop, between two steps, so no step runs half on one and half on
        the other and no stream pauses (a background compile finishes while requests are decoding). ``applied``
        is called on the worker thread once it is in place. Before ``start``/``run`` it is applied on the first
        turn of the loop.
        """
        with self._cv:
            self._new_step = (step, applied)
            self._cv.notify_all()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {
                "active": len(self._rows),
                "queued": len(self._waiting),
                **self._stats,
                "steps": self._steps,
                "avg_batch": self._batch_sum / self._steps if self._steps else 0.0,
                "max_batch": self.max_batch,
            }

    # -- worker -------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        self._serving_thread = threading.current_thread()
        try:
            self._serve()
        finally:
            self._serving_thread = None
            self._done.set()

    def _serve(self) -> None:
        with torch.inference_mode():
            while True:
                applied = None
                with self._cv:
                    while self._running and not self._waiting and not self._rows and self._new_step is None:
                        self._cv.wait()
                    if not self._running:
                        break
                    if self._new_step is not None:
                        self.decode_step, applied = self._new_step
                        self._new_step = None
                    self._admit()
                if applied is not None:
                    applied()
                try:
                    self._step()
                except Exception as exc:  # a failing step must not kill the worker: fail its requests instead
                    log.exception("generation step failed")
                    err = GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")
                    for row in self._rows:
                        row.handle._emit(err)
                        self._stats["failed"] += 1
                    self._rows.clear()
                    self._n_dec = 0
            self._shutdown()

    def _admit(self) -> None:
        """(Lock held.) Drop cancelled waiters; start prefilling the next request if a row is free."""
        for h in [h for h in self._waiting if h.cancel_requested]:
            self._waiting.remove(h)
            self._finish(h, h.state.cancel())
        while self._waiting and len(self._rows) < self.max_batch:
            handle = self._waiting.popleft()
            handle.state.t_prefill_start = time.perf_counter()
            self._rows.append(_Row(handle))

    def _step(self) -> None:
        for i in reversed(range(len(self._rows))):
            if self._rows[i].handle.cancel_requested:
                self._finish(self._rows[i].handle, self._rows[i].state.cancel())
                self._remove(i)
        if len(self._rows) > self._n_dec:
            group = self._prefill_group()
            if group > 1:
                self._prefill_together(group)
            else:
                self._prefill_step(self._n_dec)
        if self._n_dec:
            self._decode_step()

    def _prefill_group(self) -> int:
        """How many rows from the first one to prefill can be prefilled together: as many as fit one chunk's
        budget of tokens once padded to the longest (so the decoding rows wait no longer than for one chunk), with
        the padding inside the cache."""
        rest = [len(r.state.prompt_ids) - r.prefilled for r in self._rows[self._n_dec :]]
        rows = self._rows[self._n_dec :]
        n, width = 0, 0
        while n < len(rest):
            w = max(width, rest[n])
            if (n + 1) * w > self.prefill_chunk or any(
                r.prefilled + w > self.model.cache_info.max_seq for r in rows[: n + 1]
            ):
                break
            n, width = n + 1, w
        return n

    def _prefill_step(self, i: int) -> None:
        row = self._rows[i]
        ids = row.state.prompt_ids
        chunk = ids[row.prefilled : row.prefilled + self.prefill_chunk]
        logits = prefill_chunk(self.model, chunk, row.prefilled, slot=i)
        self._stats["prefill_calls"] += 1
        row.prefilled += len(chunk)
        self._stats["prefill_tokens"] += len(chunk)
        if row.prefilled < len(ids):
            return
        self._n_dec += 1  # the row sits right after the decoding ones: it simply joins them
        self._stats["tokens_generated"] += 1
        self._deliver(i, row.state.sample(logits))

    def _prefill_together(self, n: int) -> None:
        """Prefill the rest of the next ``n`` rows' prompts in one forward call; they all join the decoding rows.

        Rows are left-padded to the longest, so every row's last prompt token is the last column. Pad tokens get
        the positions just after their row's prompt: no prompt token can see them (a key is visible to a query
        only at a position <= its own), and the decode steps overwrite those cache positions before reading them.
        """
        first = self._n_dec
        rows = self._rows[first : first + n]
        chunks = [r.state.prompt_ids[r.prefilled :] for r in rows]
        width = max(len(c) for c in chunks)
        tokens = torch.zeros(n, width, dtype=torch.long)
        pos = torch.empty(n, width, dtype=torch.long)
        for j, (r, c) in enumerate(zip(rows, chunks, strict=True)):
            pad = width - len(c)
            tokens[j, pad:] = torch.tensor(c, dtype=torch.long)
            pos[j, pad:] = torch.arange(r.prefilled, r.prefilled + len(c))
            pos[j, :pad] = torch.arange(r.prefilled + len(c), r.prefilled + width)
        length = max(r.prefilled for r in rows) + width  # every row's last position is its prefilled + width - 1
        logits = self.model(tokens, pos, slot=first, last_only=True, length=length)[:, -1]
        self._stats["prefill_calls"] += 1
        for r, c in zip(rows, chunks, strict=True):
            r.prefilled += len(c)
            self._stats["prefill_tokens"] += len(c)
        self._n_dec += n
        self._stats["tokens_generated"] += n
        picked = [r.state.sample(logits[j]) for j, r in enumerate(rows)]
        for j in reversed(range(n)):  # deliver from the end: a finished row's hole is filled from behind
            self._deliver(first + j, picked[j])

    def _decode_step(self) -> None:
        rows = self._rows[: self._n_dec]
        n = len(rows)
        tokens = torch.tensor([[r.state.last_token] for r in rows], dtype=torch.long)
        pos = torch.tensor([[r.state.position] for r in rows], dtype=torch.long)
        length = max(r.state.position for r in rows) + 1  # known here: the model reads nothing back from pos
        logits = decode_step(self.model, self.decode_step, tokens, pos, length)[:, -1]  # (n, V)
        key = tuple(r.handle.id for r in rows)
        if key != self._settings_key or self._settings is None:
            self._settings_key, self._settings = key, BatchSettings.of([r.state.params for r in rows])
        counts = seen = None
        if self._settings.any_penalty:
            counts, seen = self._penalty_tables(rows, logits.shape[-1])
        nxt = sample_batch(logits, self._settings, [r.state.generator for r in rows], counts, seen).tolist()
        self._steps += 1
        self._batch_sum += n
        self._stats["tokens_generated"] += n
        for i in reversed(range(n)):
            self._deliver(i, nxt[i])

    @staticmethod
    def _penalty_tables(rows: list[_Row], vocab: int) -> tuple[Tensor, Tensor]:
        counts = torch.zeros(len(rows), vocab)
        seen = torch.zeros(len(rows), vocab, dtype=torch.bool)
        for i, r in enumerate(rows):
            if r.state.counts is not None and r.state.seen is not None:
                counts[i] = r.state.counts
                seen[i] = r.state.seen
        return counts, seen

    def _deliver(self, i: int, token: int) -> None:
        """Hand a sampled token to row ``i``'s request; a finished request leaves its row."""
        row = self._rows[i]
        text = row.state.accept(token)
        if text:
            row.handle._emit(text)
        if row.state.done:
            self._finish(row.handle, "")
            self._remove(i)

    def _finish(self, handle: RequestHandle, text: str) -> None:
        if text:
            handle._emit(text)
        usage = handle.state.usage()
        self._stats["cancelled" if usage.finish_reason == "cancelled" else "completed"] += 1
        handle._emit(usage)

    def _remove(self, i: int) -> None:
        """Free row ``i`` keeping rows contiguous: the last decoding row moves into the hole, and the rows to
        prefill move down behind it."""
        last = self._n_dec - 1
        if i > last:  # a row still to prefill: only the first of them can hold anything, and it is not moved
            self._rows.pop(i)
            return
        if i != last:
            self.model.move_slot(last, i, self._rows[last].cached)
            self._rows[i] = self._rows[last]
        if len(self._rows) > self._n_dec:
            # The first row to prefill moves into the hole at the end of the decoding rows; the rows after it
            # shift down by one, which costs nothing: they have nothing cached yet.
            self.model.move_slot(self._n_dec, last, self._rows[self._n_dec].cached)
            self._rows[last] = self._rows[self._n_dec]
            del self._rows[self._n_dec]
        else:
            self._rows.pop()
        self._n_dec -= 1

    def _shutdown(self) -> None:
        with self._cv:
            waiting = list(self._waiting)
            self._waiting.clear()
        for h in waiting:
            self._finish(h, h.state.cancel())
        for row in self._rows:
            self._finish(row.handle, row.state.cancel())
        self._rows.clear()
        self._n_dec = 0
