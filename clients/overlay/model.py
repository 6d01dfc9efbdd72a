"""What the overlay shows, independent of how: the last few lines, each fading out after ``ttl`` seconds.

Events in (from the bridge, as ``(topic, body, ts)``): ``chat.message`` with role ``assistant`` becomes an
answer line; ``voice.*`` events that carry ``text`` become spoken lines; ``game.state`` sets the current game.
The terminal view and the Kivy window both render ``visible(now)``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bus.topics import CHAT_MESSAGE, VOICE
from clients.overlay.publisher import GAME_STATE

MAX_TEXT = 500


@dataclass(frozen=True, slots=True)
class Line:
    kind: str  # "answer", "spoken", "game"
    text: str
    ts: float


class OverlayModel:
    def __init__(self, max_lines: int = 5, ttl: float = 30.0) -> None:
        self.lines: deque[Line] = deque(maxlen=max_lines)
        self.ttl = ttl
        self.game: str | None = None

    def on_event(self, topic: str, body: dict[str, Any], ts: float | None = None) -> Line | None:
        """Take one event; returns the line it added, if any."""
        now = ts if ts is not None else time.time()
        text = body.get("text")
        line: Line | None = None
        if topic == CHAT_MESSAGE:
            if body.get("role") == "assistant" and isinstance(text, str) and text.strip():
                line = Line("answer", _clip(text), now)
        elif topic.startswith(VOICE) and isinstance(text, str) and text.strip():
            line = Line("spoken", _clip(text), now)
        elif topic == GAME_STATE:
            name = body.get("name") if isinstance(body.get("name"), str) else None
            if name != self.game:
                self.game = name
                line = Line("game", name or "no game", now)
        if line is not None:
            self.lines.append(line)
        return line

    def visible(self, now: float) -> list[Line]:
        return [line for line in self.lines if now - line.ts < self.ttl]


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def render_line(line: Line) -> str:
    """The one-line text form used by the terminal view."""
    stamp = time.strftime("%H:%M:%S", time.localtime(line.ts))
    mark = {"answer": "assistant:", "spoken": "(spoken)", "game": "game:"}[line.kind]
    return f"[{stamp}] {mark} {line.text}"
