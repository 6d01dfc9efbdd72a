"""Fitting a conversation into the context window: oldest turns go, the system prompt and the newest stay."""

from __future__ import annotations

import pytest

from bus.errors import TooLarge
from daemon.modules.llm.context import fit_context, reply_reserve


def words(messages: list[dict[str, str]]) -> int:
    """A stand-in tokenizer: one token per word, plus one per message for its role marker."""
    return sum(len(m["content"].split()) + 1 for m in messages)


def conv(*turns: str, system: str | None = "be brief") -> list[dict[str, str]]:
    out = [{"role": "system", "content": system}] if system else []
    for i, text in enumerate(turns):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return out


def test_a_conversation_that_fits_is_kept_whole() -> None:
    messages = conv("a b", "c d", "e f")
    fitted = fit_context(messages, words, window=100, reserve=10)
    assert fitted.messages == messages
    assert (fitted.dropped_messages, fitted.prompt_tokens) == (0, 12)
    assert fitted.usage()["truncated"] is False


def test_overflow_drops_the_oldest_turn_whole_and_keeps_the_system_prompt() -> None:
    messages = conv("one two three", "four five six", "seven eight", "nine ten", "last")
    # Everything is 3 + 4 + 4 + 3 + 3 + 2 = 19 tokens; a budget of 12 forces the first turn (user + reply) out.
    fitted = fit_context(messages, words, window=22, reserve=10)
    assert fitted.messages == [messages[0], *messages[3:]]
    assert fitted.dropped_messages == 2
    assert fitted.usage() == {
        "window": 22,
        "reserved_for_reply": 10,
        "prompt_tokens": 11,
        "dropped_messages": 2,
        "truncated": True,
    }


def test_kept_history_always_starts_with_a_user_message() -> None:
    messages = conv("u1", "a1 a1 a1 a1 a1 a1", "u2", "a2", "u3")
    fitted = fit_context(messages, words, window=12, reserve=2)
    assert next(m["role"] for m in fitted.messages[1:]) == "user"


def test_without_a_system_prompt_only_turns_are_dropped() -> None:
    messages = conv("x " * 10, "y", "z", system=None)
    fitted = fit_context(messages, words, window=5, reserve=1)
    assert fitted.messages == [messages[-1]]


def test_a_newest_message_too_large_for_the_window_is_too_large() -> None:
    with pytest.raises(TooLarge, match="context window of 10 tokens leaves 6 after reserving 4") as info:
        fit_context(conv("w " * 20), words, window=10, reserve=4)
    assert info.value.details == {"prompt_tokens": 24, "window": 10, "reserved_for_reply": 4}


def test_the_reply_reserve_never_takes_more_than_half_the_window() -> None:
    assert reply_reserve(2048, 100) == 100
    assert reply_reserve(2048, 4000) == 1024
