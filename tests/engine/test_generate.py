"""Streaming generation: UTF-8-safe deltas, stop strings across tokens, stop tokens, limits and usage."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.generate import (
    ContextOverflow,
    Decoding,
    IncrementalDetokenizer,
    InvalidPrompt,
    StopMatcher,
    Usage,
    generate,
)
from engine.sampling import SamplingParams
from tests.engine.speed_helpers import CORPUS, byte_tokenizer, tiny_model

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


def run(model, tok, prompt: str, params: SamplingParams, **kw) -> tuple[list[str], Usage]:
    events = list(generate(model, tok, tok.encode(prompt), params, **kw))
    usage = events.pop()
    assert isinstance(usage, Usage)
    assert all(isinstance(e, str) and e for e in events)
    return events, usage


def test_split_emoji_and_cjk_are_held_until_complete() -> None:
    tok = byte_tokenizer()
    text = "😀 日本語 hello 🚀中文"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the tokenizer really splits characters
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + detok.flush() == text
    assert deltas[0] == ""  # the emoji's first byte alone is held back


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=sorted(set("".join(CORPUS))), max_size=40))
def test_deltas_are_whole_characters_and_join_to_the_decoded_text(text: str) -> None:
    tok = byte_tokenizer()
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    deltas = [detok.push(i) for i in ids]
    for d in deltas:
        d.encode("utf-8")  # a str with lone surrogates would fail here
        assert "\ufffd" not in d
    assert "".join(deltas) + detok.flush() == tok.decode(ids)


def test_stop_string_split_across_deltas_is_not_emitted() -> None:
    m = StopMatcher(["STOP"])
    assert m.push("hello S") == ("hello ", False)
    assert m.push("TO") == ("", False)
    assert m.push("P now") == ("", True)


def test_held_back_prefix_is_released_when_it_does_not_complete() -> None:
    m = StopMatcher(["STOP"])
    assert m.push("a ST") == ("a ", False)
    assert m.push("AR") == ("STAR", False)
    assert m.flush() == ""


def test_earliest_of_several_stop_strings_wins() -> None:
    m = StopMatcher(["END", "the"])
    assert m.push("go to the END") == ("go to ", True)


def test_decoding_stops_on_a_string_spanning_tokens() -> None:
    tok = byte_tokenizer()
    ids = tok.encode("Stop here STOP now. END of the line")
    state = Decoding(tok, [0], SamplingParams(stop=["now. END"], max_tokens=100), tok.vocab_size)
    out = ""
    for i in ids:
        out += state.accept(i)
        if state.done:
            break
    assert out == "Stop here STOP "
    assert state.finish_reason == "stop"


def test_max_tokens_ends_with_length() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    _, usage = run(model, tok, "hello world", SamplingParams(temperature=0.0, max_tokens=9))
    assert usage.finish_reason == "length"
    assert usage.completion_tokens == 9
    assert usage.prompt_tokens == len(tok.encode("hello world"))


def test_usage_timings_are_consistent() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    _, usage = run(model, tok, "hello world", GREEDY)
    assert usage.prefill_ms is not None
    assert usage.ttft_ms is not None
    assert usage.decode_ms is not None
    assert 0 < usage.prefill_ms <= usage.ttft_ms <= usage.total_ms
    assert usage.decode_ms > 0
    assert usage.decode_tokens_per_s == pytest.approx((usage.completion_tokens - 1) / (usage.decode_ms / 1000))


def test_stream_text_equals_decode_of_completion() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    prompt = tok.encode("hello world")
    events = list(generate(model, tok, prompt, GREEDY))
    state_text = "".join(e for e in events if isinstance(e, str))
    greedy_ids = _greedy_ids(model, tok, prompt, 24)
    assert state_text == tok.decode(greedy_ids)


def _greedy_ids(model, tok, prompt: list[int], n: int) -> list[int]:
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            model.drop_cache()
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    model.setup_cache(4, 256)
    return ids[len(prompt) :]


def test_stop_token_ends_stream_and_is_not_shown() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    prompt = tok.encode("hello world")
    ids = _greedy_ids(model, tok, prompt, 8)
    stop_at = next(i for i in range(2, 8) if ids[i] not in ids[:i])
    deltas, usage = run(model, tok.with_stop_ids({ids[stop_at]}), "hello world", GREEDY)
    assert usage.finish_reason == "stop"
    assert usage.completion_tokens == stop_at + 1
    assert "".join(deltas) == tok.decode(ids[:stop_at])


def test_stop_string_in_generated_text_cuts_it() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    full, _ = run(model, tok, "hello world", GREEDY)
    text = "".join(full)
    stop = text[5:9]
    cut, usage = run(model, tok, "hello world", SamplingParams(temperature=0.0, max_tokens=24, stop=[stop]))
    assert "".join(cut) == text[: text.index(stop)]
    assert usage.finish_reason == "stop"


def test_chunked_prefill_gives_same_tokens() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    prompt = " ".join(CORPUS[:3])
    whole, _ = run(model, tok, prompt, GREEDY)
    chunked, _ = run(model, tok, prompt, GREEDY, prefill_chunk_size=7)
    assert "".join(chunked) == "".join(whole)


def test_cancel_event_ends_with_cancelled() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    cancel = threading.Event()
    stream = generate(model, tok, tok.encode("hello"), SamplingParams(temperature=0.0, max_tokens=50), cancel=cancel)
    got = []
    for ev in stream:
        got.append(ev)
        cancel.set()
    usage = got[-1]
    assert isinstance(usage, Usage)
    assert usage.finish_reason == "cancelled"
    assert usage.completion_tokens < 50


def test_context_overflow_is_refused_with_a_clear_error() -> None:
    model, tok = tiny_model(max_seq=64), byte_tokenizer()
    with pytest.raises(ContextOverflow) as info:
        next(generate(model, tok, list(range(1, 40)), SamplingParams(max_tokens=30)))
    assert info.value.code == "too_large"
    assert "prompt (39 tokens) + max_tokens (30) = 69 exceeds the context length 64" in str(info.value)


def test_empty_prompt_is_refused() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    with pytest.raises(InvalidPrompt, match="prompt is empty") as info:
        next(generate(model, tok, [], GREEDY))
    assert info.value.code == "bad_request"


def test_out_of_vocabulary_prompt_ids_are_refused() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    v = model.config.vocab_size
    with pytest.raises(InvalidPrompt, match=rf"prompt token ids must be integers in \[0, {v}\); got \[{v}, -1\]"):
        next(generate(model, tok, [1, v, -1], GREEDY))


def test_a_request_with_penalties_starts_no_openmp_team_on_the_submitting_thread() -> None:
    """The penalty tables are made by the engine thread on first use. Filled on the submitting thread, they gave
    the process a second OpenMP team, and libgomp, managing more threads than CPUs, then slept between parallel
    regions: every later decode step of the daemon took 4x as long."""
    import os

    import torch

    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread: no OpenMP team is ever started")
    tok = byte_tokenizer()
    params = SamplingParams(repetition_penalty=1.1, presence_penalty=0.5, max_tokens=4)
    counted: list[int] = []

    def submit() -> None:
        before = len(os.listdir("/proc/self/task"))
        state = Decoding(tok, [1, 2, 3], params, 65536)  # a vocabulary big enough for a parallel fill
        counted.extend((before, len(os.listdir("/proc/self/task"))))
        assert state.params is params

    t = threading.Thread(target=submit)
    t.start()
    t.join()
    assert counted[1] == counted[0]
    # Made on first use, as the sampling thread uses them: the prompt's tokens seen, nothing counted yet.
    state = Decoding(tok, [1, 2, 3], params, 65536)
    assert state.seen is not None
    assert state.counts is not None
    assert state.seen.nonzero().flatten().tolist() == [1, 2, 3]
    assert float(state.counts.sum()) == 0.0
