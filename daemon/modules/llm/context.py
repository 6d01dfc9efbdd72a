"""Fit a conversation into the model's context window.

When a conversation outgrows the window, the oldest turns go first; the system prompt (the persona) and the
newest user message always stay, because without them the reply would be about something else. What was
dropped is reported so the reply's usage can say so instead of the model silently forgetting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import TooLarge

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class FittedContext:
    messages: list[Message]
    prompt_tokens: int
    dropped_messages: int
    window: int
    reserved: int

    def usage(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "reserved_for_reply": self.reserved,
            "prompt_tokens": self.prompt_tokens,
            "dropped_messages": self.dropped_messages,
            "truncated": self.dropped_messages > 0,
        }


def reply_reserve(window: int, max_tokens: int) -> int:
    """Tokens kept free for the reply: what was asked for, but never more than half the window."""
    return max(1, min(max_tokens, window // 2))


def fit_context(
    messages: list[Message], count_tokens: Callable[[list[Message]], int], window: int, reserve: int
) -> FittedContext:
    """Drop the oldest non-system messages until ``count_tokens(kept) + reserve <= window``.

    Turns are dropped whole: after a user message goes, an assistant reply that would now lead the history
    goes with it, so the kept history still alternates as the chat template expects. Raises ``TooLarge`` when
    even the system prompt plus the newest message do not fit.
    """
    if not messages:
        raise ValueError("fit_context needs at least the new user message")
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    budget = window - reserve
    dropped = 0
    while True:
        kept = system + rest
        used = count_tokens(kept)
        if used <= budget:
            return FittedContext(kept, used, dropped, window, reserve)
        if len(rest) <= 1:
            raise TooLarge(
                f"the message needs {used} tokens with the system prompt, but the context window of {window} "
                f"tokens leaves {budget} after reserving {reserve} for the reply; shorten it or lower max_tokens",
                {"prompt_tokens": used, "window": window, "reserved_for_reply": reserve},
            )
        rest = rest[1:]
        dropped += 1
        while len(rest) > 1 and rest[0]["role"] != "user":
            rest = rest[1:]
            dropped += 1
