"""Which game is running, from window titles or process names, through a pluggable source and a rule table.

A *source* lists candidate strings (``wmctrl -l`` window titles on X11, process names from ``/proc`` anywhere,
or a fixed list); the *detector* returns the first rule whose pattern matches one of them. Rules come with the
package for well-known games and can be replaced from a JSON file: ``[{"id", "name", "pattern", "persona"?}]``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class GameRule:
    id: str
    name: str
    pattern: re.Pattern[str]
    persona: str | None = None


@dataclass(frozen=True, slots=True)
class GameState:
    """What is being played (``game`` None: nothing we know); ``body()`` is the ``game.state`` event body."""

    game: str | None
    name: str | None = None
    match: str | None = None  # the title or process name that matched
    persona: str | None = None
    source: str | None = None

    def body(self) -> dict[str, Any]:
        return {"game": self.game, "name": self.name, "match": self.match, "persona": self.persona,
                "source": self.source}  # fmt: skip


def _rule(id: str, name: str, pattern: str, persona: str | None = None) -> GameRule:
    return GameRule(id, name, re.compile(pattern, re.IGNORECASE), persona)


DEFAULT_RULES: tuple[GameRule, ...] = (
    _rule("minecraft", "Minecraft", r"\bminecraft\b"),
    _rule("factorio", "Factorio", r"\bfactorio\b"),
    _rule("stardew_valley", "Stardew Valley", r"stardew\s*valley|^stardewvalley$"),
    _rule("terraria", "Terraria", r"\bterraria\b"),
    _rule("cs2", "Counter-Strike 2", r"counter-strike 2|^cs2$"),
    _rule("dota2", "Dota 2", r"\bdota 2\b|^dota2$"),
    _rule("league_of_legends", "League of Legends", r"league of legends|^leagueclient"),
    _rule("elden_ring", "Elden Ring", r"elden\s*ring|^eldenring(\.exe)?$"),
    _rule("ksp", "Kerbal Space Program", r"kerbal space program|^ksp(\.x86_64)?$"),
    _rule("rimworld", "RimWorld", r"\brimworld\b"),
    _rule("supertuxkart", "SuperTuxKart", r"supertuxkart"),
)


def load_rules(path: str | Path) -> tuple[GameRule, ...]:
    """Rules from a JSON file; a malformed entry raises ``ValueError`` naming its index and key."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rules")
    rules = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: rule {i} is not an object")
        for key in ("id", "name", "pattern"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ValueError(f"{path}: rule {i} needs a non-empty string {key!r}")
        try:
            rules.append(_rule(item["id"], item["name"], item["pattern"], item.get("persona")))
        except re.error as exc:
            raise ValueError(f"{path}: rule {i} has a bad pattern: {exc}") from None
    return tuple(rules)


class TitleSource(Protocol):
    name: str

    def titles(self) -> list[str]:
        """Candidate strings right now (blocking is allowed: the publisher runs this in a thread)."""
        ...


class StaticSource:
    """A fixed list: for tests, and for ``--title`` when the window system cannot be asked."""

    name = "static"

    def __init__(self, titles: list[str]) -> None:
        self.items = list(titles)

    def titles(self) -> list[str]:
        return list(self.items)


class WmctrlSource:
    """Window titles on X11 via ``wmctrl -l`` (apt install wmctrl)."""

    name = "window"

    def __init__(self) -> None:
        if shutil.which("wmctrl") is None:
            raise RuntimeError("the window detector needs wmctrl (apt install wmctrl) and an X11 display")

    def titles(self) -> list[str]:
        out = subprocess.run(["wmctrl", "-l"], capture_output=True, text=True, timeout=5, check=False).stdout
        # "0x03a00003  0 host Title words" → "Title words"
        return [parts[3] for line in out.splitlines() if len(parts := line.split(None, 3)) == 4]


class ProcessSource:
    """Process names from ``/proc`` (Linux): works without a display, e.g. for games started from Steam."""

    name = "process"

    def __init__(self, proc: str | Path = "/proc") -> None:
        self.proc = Path(proc)

    def titles(self) -> list[str]:
        names = []
        for entry in self.proc.iterdir() if self.proc.is_dir() else ():
            if not entry.name.isdigit():
                continue
            try:
                names.append((entry / "comm").read_text().strip())
                cmd = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            if cmd:
                names.append(os.path.basename(cmd.decode(errors="replace")))
        return names


def make_source(kind: str, titles: list[str] | None = None) -> TitleSource:
    if kind == "static":
        return StaticSource(titles or [])
    if kind == "window":
        return WmctrlSource()
    if kind == "process":
        return ProcessSource()
    raise ValueError(f"unknown detector {kind!r} (known: window, process, static)")


class GameDetector:
    def __init__(self, rules: tuple[GameRule, ...] = DEFAULT_RULES) -> None:
        self.rules = rules

    def detect(self, titles: list[str], source: str | None = None) -> GameState:
        for rule in self.rules:
            for title in titles:
                if rule.pattern.search(title):
                    return GameState(rule.id, rule.name, title[:200], rule.persona, source)
        return GameState(None, source=source)
