"""The one place that prints: human text for people, ``--json`` for programs.

Commands never call ``print``. They build an output object (``Table``, ``Fields``, ``Text`` or a ``Group`` of
them) that carries both the human layout and the JSON document, and hand it to ``Renderer.show``; streams and
tails hand one item at a time to ``Renderer.item``. That keeps the two modes in step: whatever a person can
read, a script can parse, and a new command gets aligned tables, TTY-only colours and JSON lines for free.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

# ANSI SGR codes for the states a reader scans for; anything else is printed plain.
STATE_STYLES: dict[str, str] = {
    "active": "32",
    "loaded": "32",
    "ok": "32",
    "online": "32",
    "loading": "33",
    "unloading": "33",
    "busy": "33",
    "failed": "1;31",
    "error": "1;31",
    "offline": "31",
    "unloaded": "2",
}


def use_colour(stream: TextIO) -> bool:
    """Colour only a terminal, and never when the user opted out (https://no-color.org) or TERM is dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def plain(value: Any) -> str:
    """A compact human form of any JSON-able value: ``-`` for nothing, ``yes``/``no``, ``a, b`` for lists."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={plain(v) if not isinstance(v, dict | list) else _compact(v)}" for k, v in value.items())
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=json_default)


def clock(ts: Any) -> str:
    """Local wall-clock time with milliseconds, the resolution at which people compare event timings."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "-"
    frac = int((ts % 1) * 1000)
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{frac:03d}"


def when(ts: Any) -> str:
    """Local date and time to the second, for moments that may be days ago (a daemon's start)."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def duration(seconds: Any) -> str:
    """``3d 4h``, ``12m 5s``, ``850 ms``: two units are enough to read an uptime at a glance."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    s = int(seconds)
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "m"), (s % 60, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def json_default(value: Any) -> Any:
    """msgpack can carry bytes, sets and tuples; JSON cannot. Bytes become hex so nothing is lost."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


@dataclass(slots=True)
class Column:
    key: str
    header: str
    state: bool = False  # colour the value as a state
    right: bool = False  # right-align (numbers)
    fmt: Callable[[Any], str] = plain


@dataclass(slots=True)
class Table:
    columns: Sequence[Column]
    rows: Sequence[dict[str, Any]]
    data: Any = None  # the JSON document; the rows themselves when None
    title: str | None = None
    empty: str = "(none)"


@dataclass(slots=True)
class Fields:
    """Aligned ``label  value`` lines; labels listed in ``states`` are coloured as states."""

    items: Sequence[tuple[str, Any]]
    data: Any = None
    title: str | None = None
    states: frozenset[str] = frozenset()


@dataclass(slots=True)
class Text:
    text: str
    data: Any = None


@dataclass(slots=True)
class Group:
    """Several blocks shown one after another with a blank line between, and one JSON document."""

    parts: Sequence[Table | Fields | Text]
    data: Any = None


Output = Table | Fields | Text | Group


@dataclass
class Renderer:
    json_mode: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    colour: bool | None = None  # None: decide from the output stream

    def __post_init__(self) -> None:
        if self.colour is None:
            self.colour = use_colour(self.out)

    # -- primitives ----------------------------------------------------------------------------------------
    def paint(self, text: str, state: Any) -> str:
        style = STATE_STYLES.get(str(state).lower()) if self.colour else None
        return f"\x1b[{style}m{text}\x1b[0m" if style else text

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text

    def _width(self) -> int:
        """The terminal's width when printing to one; unlimited for pipes and files, which keep everything."""
        isatty = getattr(self.out, "isatty", None)
        if not (isatty and isatty()):
            return 1 << 30
        import shutil

        return shutil.get_terminal_size((100, 24)).columns

    def dumps(self, data: Any, *, lines: bool = False) -> str:
        if lines:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=json_default)
        return json.dumps(data, ensure_ascii=False, indent=2, default=json_default)

    # -- whole results -------------------------------------------------------------------------------------
    def show(self, output: Output) -> None:
        if self.json_mode:
            self.out.write(self.dumps(_data_of(output)) + "\n")
        else:
            self.out.write(self.format(output))
        self.out.flush()

    def format(self, output: Output) -> str:
        if isinstance(output, Group):
            return "\n".join(self.format(part) for part in output.parts)
        if isinstance(output, Table):
            return self._table(output)
        if isinstance(output, Fields):
            return self._fields(output)
        return output.text + ("" if output.text.endswith("\n") else "\n")

    def _table(self, table: Table) -> str:
        head = f"{self.bold(table.title)}\n" if table.title else ""
        if not table.rows:
            return head + table.empty + "\n"
        cells = [[col.fmt(row.get(col.key)) for col in table.columns] for row in table.rows]
        widths = [max(len(col.header), *(len(r[i]) for r in cells)) for i, col in enumerate(table.columns)]
        last = len(table.columns) - 1
        room = self._width() - sum(widths[:last]) - 2 * last
        if room >= 10:  # on a terminal, cut the last (free-text) column instead of wrapping every row
            for r in cells:
                if len(r[last]) > room:
                    r[last] = r[last][: room - 1] + "…"

        def line(values: list[str], rows_state: list[Any] | None) -> str:
            out = []
            for i, (col, value) in enumerate(zip(table.columns, values, strict=True)):
                padded = value.rjust(widths[i]) if col.right else value if i == last else value.ljust(widths[i])
                if rows_state is not None and col.state:
                    padded = self.paint(padded, rows_state[i])
                out.append(padded)
            return "  ".join(out).rstrip()

        lines = [self.bold(line([c.header for c in table.columns], None))]
        for row, values in zip(table.rows, cells, strict=True):
            lines.append(line(values, [row.get(c.key) for c in table.columns]))
        return head + "\n".join(lines) + "\n"

    def _fields(self, fields: Fields) -> str:
        head = f"{self.bold(fields.title)}\n" if fields.title else ""
        if not fields.items:
            return head
        width = max(len(label) for label, _ in fields.items)
        lines = []
        for label, value in fields.items:
            text = value if isinstance(value, str) else plain(value)
            if label in fields.states:
                text = self.paint(text, value)
            lines.append(f"{label.ljust(width)}  {text}".rstrip())
        return head + "\n".join(lines) + "\n"

    # -- streams -------------------------------------------------------------------------------------------
    def item(self, data: Any, human: str) -> None:
        """One element of a stream or tail: a JSON line, or one human line; flushed so pipes see it now."""
        self.out.write((self.dumps(data, lines=True) if self.json_mode else human) + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        """Progress meant for the person at the terminal; stderr, so stdout stays clean for pipes."""
        self.err.write(text + "\n")
        self.err.flush()

    def error(self, message: str, *, code: str, exit_code: int, details: dict[str, Any] | None = None) -> None:
        """The one-line failure on stderr, and in ``--json`` mode the same failure as an object on stdout."""
        self.err.write(f"enigma: {message}\n")
        self.err.flush()
        if self.json_mode:
            doc: dict[str, Any] = {"code": code, "message": message, "exit": exit_code}
            if details:
                doc["details"] = details
            self.out.write(self.dumps({"error": doc}, lines=True) + "\n")
            self.out.flush()


def _data_of(output: Output) -> Any:
    if output.data is not None:
        return output.data
    if isinstance(output, Table):
        return list(output.rows)
    if isinstance(output, Fields):
        return dict(output.items)
    if isinstance(output, Group):
        return [_data_of(p) for p in output.parts]
    return {"message": output.text}
