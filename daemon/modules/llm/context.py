"""Fit a conversation into the model's context window.

When a conversation outgrows the window, the oldest turns go first; the system prompt (the persona) and the
newest user message always stay, because without them the reply would be about something else. What was
dropped is reported so the reply's usage can say so instead of the model silently forgetting. The prompt is
measured by whatever the caller passes: a backend's ``prepare_chat`` renders and tokenizes it, and the last one
measured — the one that fits — is what the model then runs, so a chat prompt is rendered and tokenized once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from bus.errors import TooLarge

Message = dict[str, str]
P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class FittedContext(Generic[P]):
    messages: list[Message]
    prompt: P  # what ``measure`` made of ``messages``
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
    messages: list[Message],
    measure: Callable[[list[Message]], P],
    window: int,
    reserve: int,
    size: Callable[[P], int] | None = None,
) -> FittedContext[P]:
    """Drop the oldest non-system messages until ``size(measure(kept)) + reserve <= window``.

    ``measure`` returns a token count, or (with ``size`` saying how many tokens it holds) a prepared prompt.
    Turns are dropped whole: after a user message goes, an assistant reply that would now lead the history
    goes with it, so the kept history still alternates as the chat template expects. Raises ``TooLarge`` when
    even the system prompt plus the newest message do not fit.
    """
    if not messages:
        raise ValueError("fit_context needs at least the new user message")
    tokens = size if size is not None else cast("Callable[[P], int]", int)
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    budget = window - reserve
    dropped = 0
    while True:
        kept = system + rest
        prompt = measure(kept)
        used = tokens(prompt)
        if used <= budget:
            return FittedContext(kept, prompt, used, dropped, window, reserve)
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
