"""Streaming generation for one request, and the per-request decoding state the batching scheduler shares.

What a caller sees is a stream of text deltas that are always whole UTF-8 characters (a byte-level BPE token can
end in the middle of an emoji or a CJK character: such bytes are held back until the character completes), that
never contain a stop string (text that could be the start of one is held back until it is known not to be), then
one ``Usage``. The model work is the same as the scheduler's: chunked prefill into a cache row, then one-token
decode steps; with greedy sampling both paths give the same tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from engine.errors import EngineError
from engine.model import Transformer
from engine.sampling import SamplingParams, sample
from engine.usage import Usage, decode_rate

if TYPE_CHECKING:
    from engine.compile import StepFn

DEFAULT_PREFILL_CHUNK = 256
_DETOK_CONTEXT = 4  # prompt tokens decoded ahead of the completion so a leading space survives detokenisation


class TokenizerLike(Protocol):
    """What generation needs from a tokenizer (``engine.tokenizer.Tokenizer`` provides it)."""

    @property
    def stop_ids(self) -> set[int]: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str: ...


class ContextOverflow(EngineError, ValueError):
    """The prompt plus the tokens asked for do not fit the model's context (its KV cache)."""

    code = "too_large"


class InvalidPrompt(EngineError, ValueError):
    """The prompt is empty or holds token ids the model does not have."""

    code = "bad_request"


# ---------------------------------------------------------------------------------------------------------------
class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that never end in a partial UTF-8 sequence.

    Decoding a window of ids and diffing against the decode of the window's head (the scheme vLLM and TGI use)
    keeps tokenizer-specific joins right — a SentencePiece "▁" only becomes a space after a preceding token —
    and a trailing U+FFFD says the last token's bytes do not yet form a character.
    """

    def __init__(self, tokenizer: TokenizerLike, context: Sequence[int] = ()) -> None:
        self._tok = tokenizer
        self._ids: list[int] = list(context[-_DETOK_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token: int) -> str:
        self._ids.append(token)
        head = self._tok.decode(self._ids[self._prefix : self._read])
        full = self._tok.decode(self._ids[self._prefix :])
        if len(full) > len(head) and not full.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return full[len(head) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (at the end of the stream, an incomplete character decodes to U+FFFD)."""
        head = self._tok.decode(self._ids[self._prefix : self._read])
        full = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full[len(head) :] if full.startswith(head) else full


class StopMatcher:
    """Finds stop strings across delta boundaries; text that might begin a stop string waits in ``pending``."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was hit). After a hit the rest is dropped."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self.pending[: min(hits)]
            self.pending = ""
            return out, True
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Decoding:
    """One request's state between decode steps: settings, RNG, penalty counters, text assembly and timing.

    ``accept(token)`` takes each sampled token and returns the text to emit; once ``finish_reason`` is set the
    request is done. The scheduler keeps one per row; ``generate`` uses one directly.
    """

    def __init__(
        self,
        tokenizer: TokenizerLike,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        vocab_size: int,
        stop_ids: set[int] | None = None,
    ) -> None:
        self.params = params
        self.prompt_ids = list(prompt_ids)
        self.generator = params.make_generator()
        self.stop_ids = set(tokenizer.stop_ids if stop_ids is None else stop_ids)
        self.completion: list[int] = []
        self.finish_reason: str | None = None
        self._vocab = vocab_size
        self._tables: tuple[Tensor, Tensor] | None = None  # the penalties' counts and seen flags, made on first use
        self._detok = IncrementalDetokenizer(tokenizer, self.prompt_ids)
        self._stops = StopMatcher(params.stop)
        self.t_submit = time.perf_counter()
        self.t_prefill_start: float | None = None
        self.t_first: float | None = None
        self.t_end: float | None = None

    @property
    def counts(self) -> Tensor | None:
        """How often each token was generated (for the frequency penalty); None without penalties."""
        tables = self._penalty_tables()
        return None if tables is None else tables[0]

    @property
    def seen(self) -> Tensor | None:
        """Which tokens the prompt or the completion holds (repetition and presence penalties)."""
        tables = self._penalty_tables()
        return None if tables is None else tables[1]

    def _penalty_tables(self) -> tuple[Tensor, Tensor] | None:
        """Made by the thread that first samples (the engine's), not the one that submits the request: filling
        a vocabulary-sized table is an OpenMP parallel region, and one run on another thread gives the process a
        second OpenMP team. libgomp then manages more threads than there are CPUs and sleeps between parallel
        regions instead of spinning: the compiled decode step of SmolLM2 went from 3.8 to 17 ms per token, for
        every request that came after."""
        if not self.params.uses_penalties:
            return None
        if self._tables is None:
            seen = torch.zeros(self._vocab, dtype=torch.bool)
            seen[torch.tensor(self.prompt_ids, dtype=torch.long)] = True
            self._tables = (torch.zeros(self._vocab, dtype=torch.float32), seen)
        return self._tables

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def last_token(self) -> int:
        return self.completion[-1] if self.completion else self.prompt_ids[-1]

    @property
    def position(self) -> int:
        """Cache position of the token fed to the next decode step (the last sampled one)."""
        return len(self.prompt_ids) + len(self.completion) - 1

    def sample(self, logits: Tensor) -> int:
        return sample(logits, self.params, self.generator, self.counts, self.seen)

    def accept(self, token: int) -> str:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
        self.completion.append(token)
        if token in self.stop_ids:
            return self._finish("stop", "")
        if self.counts is not None and self.seen is not None:
            self.counts[token] += 1
            self.seen[token] = True
        text, hit = self._stops.push(self._detok.push(token))
        if hit:
            self.finish_reason = "stop"
            self.t_end = now
            return text
        if len(self.completion) >= self.params.max_tokens:
            return self._finish("length", text)
        return text

    def cancel(self) -> str:
        """End as cancelled, returning the text held back so far (minus any stop string it completes)."""
        return self._finish("cancelled", "")

    def _finish(self, reason: str, text: str) -> str:
        """Drain what the detokenizer and the stop matcher hold back, then close the request."""
        rest, hit = self._stops.push(self._detok.flush())
        self.finish_reason = "stop" if hit else reason
        self.t_end = time.perf_counter()
        return text + (rest if hit else rest + self._stops.flush())

    def usage(self) -> Usage:
        """The request's usage, timed on the thread that ran it."""
        end = self.t_end or time.perf_counter()
        start = self.t_prefill_start or self.t_submit
        first = self.t_first or end
        n = len(self.completion)
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=n,
            finish_reason=self.finish_reason or "cancelled",
            ttft_ms=None if self.t_first is None else (first - self.t_submit) * 1000.0,
            total_ms=(end - self.t_submit) * 1000.0,
            decode_tokens_per_s=decode_rate(n, self.t_first, end),
            prefill_ms=(first - start) * 1000.0,
            decode_ms=(end - first) * 1000.0,
        )


# ---------------------------------------------------------------------------------------------------------------
def check_prompt(model: Transformer, prompt_ids: Sequence[int], max_tokens: int) -> None:
    """Refuse a prompt that is empty, holds ids outside the vocabulary, or whose prompt plus completion would
    run past the cache (or the model's context) — before any model work starts."""
    n_prompt = len(prompt_ids)
    vocab = model.config.vocab_size
    bad = [t for t in prompt_ids if not isinstance(t, int) or not 0 <= t < vocab]
    if bad:
        raise InvalidPrompt(f"prompt token ids must be integers in [0, {vocab}); got {bad[:5]!r}")
    if n_prompt == 0:
        raise InvalidPrompt("the prompt is empty: at least one token is needed")
    limit = model.cache_info.max_seq or model.config.max_seq_len
    if n_prompt + max_tokens > limit:
        raise ContextOverflow(
            f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) = {n_prompt + max_tokens} exceeds the "
            f"context length {limit}; shorten the prompt or lower max_tokens"
        )


def prefill_chunk(model: Transformer, ids: Sequence[int], start: int, slot: int) -> Tensor:
    """Run ``ids`` at positions ``start…`` into cache row ``slot``; the logits (V,) of the last position."""
    tokens = torch.tensor([list(ids)], dtype=torch.long)
    pos = torch.arange(start, start + len(ids), dtype=torch.long).unsqueeze(0)
    return model(tokens, pos, slot=slot, last_only=True, length=start + len(ids))[0, -1]


def decode_step(
    model: Transformer, step: StepFn | None, tokens: Tensor, input_pos: Tensor, length: int, slot: int = 0
) -> Tensor:
    """Logits (B, 1, V) of one token per row (``tokens``/``input_pos`` (B, 1)) through the compiled ``step`` when
    there is one (``engine.compile``), else the model's eager forward."""
    if step is not None:
        return step(tokens, input_pos, slot, length, True)
    return model(tokens, input_pos, slot=slot, last_only=True, length=length)


def generate(
    model: Transformer,
    tokenizer: TokenizerLike,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    cancel: threading.Event | None = None,
    prefill_chunk_size: int = DEFAULT_PREFILL_CHUNK,
    slot: int = 0,
    step: StepFn | None = None,
) -> Iterator[str | Usage]:
    """Stream one completion: non-empty text deltas, then one ``Usage``. Uses cache row ``slot`` (a one-row
    cache is set up if the model has none) and a compiled decode ``step`` if given. ``cancel`` is checked
    before every step."""
    if model.cache_info.max_batch == 0:
        model.setup_cache(1)
    check_prompt(model, prompt_ids, params.max_tokens)
    state = Decoding(tokenizer, prompt_ids, params, model.config.vocab_size)
    with torch.inference_mode():
        state.t_prefill_start = time.perf_counter()
        ids = state.prompt_ids
        logits: Tensor | None = None
        for start in range(0, len(ids), prefill_chunk_size):
            if cancel is not None and cancel.is_set():
                break
            logits = prefill_chunk(model, ids[start : start + prefill_chunk_size], start, slot)
        while logits is not None:
            if cancel is not None and cancel.is_set():
                break
            text = state.accept(state.sample(logits))
            if text:
                yield text
            if state.done:
                break
            tok = torch.tensor([[state.last_token]], dtype=torch.long)
            pos = torch.tensor([[state.position]], dtype=torch.long)
            logits = decode_step(model, step, tok, pos, state.position + 1, slot)[0, -1]
        if not state.done:
            text = state.cancel()
            if text:
                yield text
    yield state.usage()
