"""Structured, human-readable log lines: ``time level area: message key=value …``.

Everything the daemon logs goes through the ``enigma`` logger tree (``enigma.hub``, ``enigma.manager``,
``enigma.module.echo`` …); the *area* is the name below ``enigma.``. Levels are set globally (``--log-level``,
``[daemon] log_level``) and per area (``[daemon.log_levels] hub = "debug"``), and can be changed on SIGHUP.
Extra key/value facts ride on ``extra={"kv": {...}}`` and are appended as ``key=value`` (quoted when needed).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

ROOT = "enigma"
_HANDLER_NAME = "enigma-structured"


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class KeyValueFormatter(logging.Formatter):
    """``2026-11-29T17:23:04.123Z info  manager: module echo active name=echo``."""

    def body(self, record: logging.LogRecord) -> str:
        """``area: message key=value …`` plus the traceback, if any: the part every output shares."""
        area = record.name.removeprefix(ROOT + ".") if record.name != ROOT else "daemon"  # "asyncio" stays
        line = f"{area}: {record.getMessage()}"
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict) and kv:
            line += " " + " ".join(f"{k}={_quote(v)}" for k, v in kv.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        return f"{ts} {record.levelname.lower():<7} {self.body(record)}"


# syslog priorities, which journald reads from a "<N>" prefix on each line.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(KeyValueFormatter):
    """``<6>manager: module echo active name=echo``: journald adds the time and maps the priority itself."""

    def format(self, record: logging.LogRecord) -> str:
        line = self.body(record)  # no timestamp or level name: journald records both itself
        prio = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # Continuation lines (tracebacks) keep the priority so journalctl -p shows them with their record.
        return "\n".join(f"<{prio}>{part}" for part in line.split("\n"))


def stderr_is_journal(env: dict[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """True when stderr is connected to journald: systemd sets ``JOURNAL_STREAM=dev:inode`` for it."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup(level: str = "info", per_area: dict[str, str] | None = None, stream: TextIO | None = None) -> None:
    """Configure the ``enigma`` logger tree; calling again (SIGHUP) only changes the levels."""
    root = logging.getLogger(ROOT)
    if not any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.set_name(_HANDLER_NAME)
        journal = stderr_is_journal(stream=stream or sys.stderr)
        handler.setFormatter(JournalFormatter() if journal else KeyValueFormatter())
        root.addHandler(handler)
        root.propagate = False
        # asyncio reports unhandled task errors and slow callbacks on its own logger: same lines, same place.
        aio = logging.getLogger("asyncio")
        aio.addHandler(handler)
        aio.propagate = False
    root.setLevel(level.upper())
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(ROOT + "."):
            logging.getLogger(name).setLevel(logging.NOTSET)
    for area, area_level in (per_area or {}).items():
        logging.getLogger(f"{ROOT}.{area}").setLevel(area_level.upper())
