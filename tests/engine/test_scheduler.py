"""Continuous batching: the batched path matches the single-request path; join, leave, cancel, busy, stats."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from engine.generate import ContextOverflow, InvalidPrompt, Usage, generate
from engine.sampling import SamplingParams
from engine.scheduler import Busy, GenerationFailed, RequestHandle, Scheduler, SchedulerStopped
from tests.engine.speed_helpers import byte_tokenizer, tiny_model

TIMEOUT = 60.0
PROMPTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog. Stop here STOP now.",
    "日本語",
    "END of the line; the end. hello there",
    "😀 🚀 emoji",
]


def single(model, tok, prompt: str, params: SamplingParams) -> tuple[str, Usage]:
    events = list(generate(model, tok, tok.encode(prompt), params))
    usage = events.pop()
    assert isinstance(usage, Usage)
    return "".join(events), usage  # type: ignore[arg-type]


@pytest.fixture
def tok():
    return byte_tokenizer().with_stop_ids(set())  # no early stop: lengths are exactly max_tokens


@pytest.fixture
def sched(tok) -> Iterator[Scheduler]:
    s = Scheduler(tiny_model(max_batch=3, max_seq=512), tok, max_batch=3, max_queue=8, prefill_chunk=8).start()
    yield s
    s.stop()


def first_event(handle: RequestHandle) -> str | Usage:
    return next(iter(handle))


def test_batched_greedy_equals_single_request_greedy(sched: Scheduler, tok) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=n) for n in (20, 7, 31, 12, 25)]
    handles = [sched.submit(tok.encode(p), sp) for p, sp in zip(PROMPTS, params, strict=True)]
    results = [h.collect(TIMEOUT) for h in handles]
    ref_model = tiny_model(max_batch=1, max_seq=512)
    for (text, usage), prompt, sp, h in zip(results, PROMPTS, params, handles, strict=True):
        ref_text, ref_usage = single(ref_model, tok, prompt, sp)
        assert text == ref_text
        assert h.state.completion == _single_tokens(ref_model, tok, prompt, sp)
        assert usage.completion_tokens == ref_usage.completion_tokens == sp.max_tokens
    assert sched.stats()["avg_batch"] > 1.5  # they really shared steps


def _single_tokens(model, tok, prompt: str, sp: SamplingParams) -> list[int]:
    from engine.generate import Decoding

    state = Decoding(tok, tok.encode(prompt), sp, model.config.vocab_size)
    list(generate(model, tok, state.prompt_ids, sp))
    ids = state.prompt_ids
    with torch.inference_mode():
        out: list[int] = []
        for _ in range(sp.max_tokens):
            model.drop_cache()
            out.append(int(model(torch.tensor([ids + out]))[0, -1].argmax()))
    model.setup_cache(1, 512)
    return out


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(sched: Scheduler, tok) -> None:
    mine = SamplingParams(temperature=0.9, top_p=0.9, seed=1234, max_tokens=15)
    alone, _ = sched.submit(tok.encode("hello"), mine).collect(TIMEOUT)
    others = [
        sched.submit(tok.encode(p), SamplingParams(temperature=1.2, top_k=5, seed=i, max_tokens=30))
        for i, p in enumerate(PROMPTS[:2])
    ]
    again, _ = sched.submit(tok.encode("hello"), mine).collect(TIMEOUT)
    for h in others:
        h.collect(TIMEOUT)
    assert again == alone


def test_penalised_request_in_a_batch_matches_it_alone(sched: Scheduler, tok) -> None:
    pen = SamplingParams(temperature=0.0, frequency_penalty=1.5, presence_penalty=0.5, max_tokens=20)
    ref, _ = single(tiny_model(max_batch=1, max_seq=512), tok, "hello world", pen)
    plain = sched.submit(tok.encode(PROMPTS[1]), SamplingParams(temperature=0.0, max_tokens=30))
    text, _ = sched.submit(tok.encode("hello world"), pen).collect(TIMEOUT)
    plain.collect(TIMEOUT)
    assert text == ref
    assert (
        text != single(tiny_model(max_batch=1, max_seq=512), tok, "hello world", SamplingParams(0.0, max_tokens=20))[0]
    )


def test_late_request_joins_and_leaves_while_another_runs(sched: Scheduler, tok) -> None:
    long_params = SamplingParams(temperature=0.0, max_tokens=120)
    long = sched.submit(tok.encode(PROMPTS[1]), long_params)
    first_event(long)
    short, usage = sched.submit(tok.encode("hello world"), SamplingParams(temperature=0.0, max_tokens=5)).collect(
        TIMEOUT
    )
    assert usage.completion_tokens == 5
    assert not long.done.is_set()  # the short one left while the long one was still decoding
    long.collect(TIMEOUT)
    ref_model = tiny_model(max_batch=1, max_seq=512)
    assert short == single(ref_model, tok, "hello world", SamplingParams(temperature=0.0, max_tokens=5))[0]
    assert long.state.completion == _single_tokens(ref_model, tok, PROMPTS[1], long_params)


def test_cancel_ends_active_request_with_cancelled(sched: Scheduler, tok) -> None:
    h = sched.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=400))
    first_event(h)
    h.cancel()
    _, usage = h.collect(TIMEOUT)
    assert usage.finish_reason == "cancelled"
    assert usage.completion_tokens < 400
    assert sched.stats()["cancelled"] == 1


def test_cancel_of_queued_request_ends_it_before_any_token(tok) -> None:
    with Scheduler(tiny_model(max_batch=1, max_seq=512), tok, max_batch=1) as s:
        busy = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=400))
        first_event(busy)
        queued = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=5))
        queued.cancel()
        _, usage = queued.collect(TIMEOUT)
        busy.cancel()
    assert usage.finish_reason == "cancelled"
    assert usage.completion_tokens == 0


def test_full_queue_rejects_with_busy(tok) -> None:
    with Scheduler(tiny_model(max_batch=1, max_seq=512), tok, max_batch=1, max_queue=1) as s:
        running = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=400))
        first_event(running)  # admitted: the queue is empty again
        s.submit(tok.encode("hello"), SamplingParams(max_tokens=5))
        with pytest.raises(Busy) as info:
            s.submit(tok.encode("hello"), SamplingParams(max_tokens=5))
        running.cancel()
    assert info.value.code == "busy"
    assert "queue is full (1 waiting)" in str(info.value)


def test_context_overflow_is_refused_at_submit(sched: Scheduler, tok) -> None:
    with pytest.raises(ContextOverflow, match="exceeds the context length 512") as info:
        sched.submit(tok.encode("hello"), SamplingParams(max_tokens=600))
    assert info.value.code == "too_large"


def test_bad_prompt_is_refused_at_submit(sched: Scheduler) -> None:
    with pytest.raises(InvalidPrompt, match="prompt is empty"):
        sched.submit([], SamplingParams())


def test_submit_after_stop_is_unavailable(tok) -> None:
    s = Scheduler(tiny_model(max_batch=1), tok, max_batch=1).start()
    s.stop()
    with pytest.raises(SchedulerStopped) as info:
        s.submit([1, 2], SamplingParams())
    assert info.value.code == "unavailable"


def test_stop_cancels_requests_in_flight(tok) -> None:
    s = Scheduler(tiny_model(max_batch=1, max_seq=512), tok, max_batch=1).start()
    running = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=400))
    queued = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=400))
    first_event(running)
    s.stop()
    assert running.collect(TIMEOUT)[1].finish_reason == "cancelled"
    assert queued.collect(TIMEOUT)[1].finish_reason == "cancelled"


def test_run_serves_on_the_calling_thread_until_stop(tok) -> None:
    s = Scheduler(tiny_model(max_batch=2, max_seq=512), tok, max_batch=2)
    results: list[object] = []
    serving_threads: list[threading.Thread] = []

    def client() -> None:
        try:
            serving_threads.append(s._serving_thread)  # type: ignore[arg-type]
            handle = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=6))
            results.append(handle.collect(TIMEOUT))
            long = s.submit(tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=400))
            first_event(long)
            s.stop()  # from another thread: returns once the serving loop has finished
            results.append(long.collect(TIMEOUT)[1].finish_reason)
        except BaseException as exc:
            results.append(exc)
            s.stop(timeout=0)

    worker = threading.Thread(target=client)
    s.run(ready=worker.start)  # returns when the client stops it
    worker.join(TIMEOUT)
    assert serving_threads == [threading.current_thread()]
    text, usage = results[0]  # type: ignore[misc]
    assert usage.completion_tokens == 6
    alone = single(tiny_model(max_batch=1, max_seq=512), tok, "hello", SamplingParams(temperature=0.0, max_tokens=6))
    assert text == alone[0]
    assert results[1] == "cancelled"
    with pytest.raises(SchedulerStopped):
        s.submit([1, 2], SamplingParams())


def _burst(tok, prompts: list[str], params: list[SamplingParams], prefill_chunk: int) -> tuple[list, dict]:
    """Submit every prompt before the serving loop starts (so they arrive together); results and stats."""
    s = Scheduler(tiny_model(max_batch=4, max_seq=512), tok, max_batch=4, prefill_chunk=prefill_chunk)
    handles: list[RequestHandle] = []
    results: list[object] = []

    def collect() -> None:
        try:
            results.extend(h.collect(TIMEOUT) for h in handles)
        finally:
            s.stop(timeout=0)

    def ready() -> None:
        handles.extend(s.submit(tok.encode(p), sp) for p, sp in zip(prompts, params, strict=True))
        threading.Thread(target=collect).start()

    s.run(ready=ready)
    return results, s.stats()


BURST = [PROMPTS[0], PROMPTS[2], PROMPTS[3], PROMPTS[4]]  # 2, 1, 11 and 4 tokens


@pytest.mark.parametrize(("chunk", "calls"), [(256, 1), (40, 2), (8, 3)])
def test_prompts_arriving_together_are_prefilled_together_within_one_chunk(tok, chunk: int, calls: int) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=n) for n in (9, 14, 6, 11)]
    results, stats = _burst(tok, BURST, params, prefill_chunk=chunk)
    ref = tiny_model(max_batch=1, max_seq=512)
    for (text, usage), prompt, sp in zip(results, BURST, params, strict=True):
        assert text == single(ref, tok, prompt, sp)[0]
        assert usage.completion_tokens == sp.max_tokens
    # 256: all four, padded to 11 tokens, in one call. 40: the first three (3 x 11 <= 40), then the last.
    # 8: [2, 1] (2 x 2), then the first 8 of the 11-token prompt alone, then its last 3 with the 4 (2 x 4).
    assert stats["prefill_calls"] == calls
    assert stats["prefill_tokens"] == sum(len(tok.encode(p)) for p in BURST)


def test_a_request_done_at_its_first_token_leaves_a_prefilled_burst_intact(tok) -> None:
    params = [SamplingParams(temperature=0.0, max_tokens=n) for n in (7, 1, 12, 1)]
    results, stats = _burst(tok, BURST, params, prefill_chunk=256)
    ref = tiny_model(max_batch=1, max_seq=512)
    assert [r[1].completion_tokens for r in results] == [7, 1, 12, 1]
    assert [r[0] for r in results] == [single(ref, tok, p, sp)[0] for p, sp in zip(BURST, params, strict=True)]
    assert stats["prefill_calls"] == 1
    assert stats["active"] == 0


def test_run_while_serving_is_refused(sched: Scheduler) -> None:
    with pytest.raises(RuntimeError, match="the scheduler is already serving"):
        sched.run()


def test_stats_count_requests_tokens_and_steps(sched: Scheduler, tok) -> None:
    handles = [sched.submit(tok.encode(p), SamplingParams(temperature=0.0, max_tokens=10)) for p in PROMPTS[:3]]
    for h in handles:
        h.collect(TIMEOUT)
    st = sched.stats()
    assert st["completed"] == 3
    assert st["tokens_generated"] == 30
    assert st["prefill_tokens"] == sum(len(tok.encode(p)) for p in PROMPTS[:3])
    assert st["active"] == 0
    assert st["queued"] == 0
    assert 1.0 <= st["avg_batch"] <= 3.0
    assert st["steps"] >= 9


def _listened(handle: RequestHandle) -> list[tuple[object, int]]:
    """Every event a listener gets, with the tokens each stands for, once the request has ended."""
    got: list[tuple[object, int]] = []
    ended = threading.Event()

    def on_event(ev: object, tokens: int) -> None:
        got.append((ev, tokens))
        if not isinstance(ev, str):
            ended.set()

    handle.listen(on_event)
    assert ended.wait(TIMEOUT)
    return got


def test_a_listener_gets_the_blocking_iterators_events_with_their_token_counts(sched: Scheduler, tok) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=15)
    sync_text, _ = sched.submit(tok.encode("日本語 hello"), params).collect(TIMEOUT)
    got = _listened(sched.submit(tok.encode("日本語 hello"), params))
    usage, _ = got.pop()
    assert isinstance(usage, Usage)
    assert "".join(str(ev) for ev, _ in got) == sync_text
    # The byte tokenizer needs up to 3 tokens for one character: the deltas carry the count, not the chunks.
    assert sum(n for _, n in got) == usage.completion_tokens == 15
    assert all(n >= 1 for _, n in got)


def test_a_listener_added_after_the_events_gets_them_in_order(sched: Scheduler, tok) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=15)
    ref, _ = sched.submit(tok.encode("hello"), params).collect(TIMEOUT)
    h = sched.submit(tok.encode("hello"), params)
    assert h.done.wait(TIMEOUT)  # everything already produced
    got = _listened(h)
    assert isinstance(got[-1][0], Usage)
    assert "".join(str(ev) for ev, _ in got[:-1]) == ref


class FlakyModel(torch.nn.Module):
    """A real model that raises once when told to: the scheduler must fail that step's requests and go on."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.fail_next = False

    @property
    def cache_info(self):
        return self.inner.cache_info

    def setup_cache(self, *a, **k) -> None:
        self.inner.setup_cache(*a, **k)

    def move_slot(self, *a) -> None:
        self.inner.move_slot(*a)

    def forward(self, *a, **k):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return self.inner(*a, **k)


def test_failed_step_fails_its_requests_and_the_scheduler_goes_on(tok) -> None:
    model = FlakyModel(tiny_model(max_batch=2))
    with Scheduler(model, tok, max_batch=2) as s:  # type: ignore[arg-type]
        model.fail_next = True
        with pytest.raises(GenerationFailed, match="generation failed: RuntimeError: boom") as info:
            s.submit(tok.encode("hello"), SamplingParams(max_tokens=5)).collect(TIMEOUT)
        assert info.value.code == "internal"
        _, usage = s.submit(tok.encode("hello"), SamplingParams(max_tokens=5)).collect(TIMEOUT)
        assert usage.finish_reason == "length"
        assert s.stats()["failed"] == 1
