"""Log lines: time, level, area, message, then key=value facts; levels per area."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from daemon import logging as dlog


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root, aio = logging.getLogger(dlog.ROOT), logging.getLogger("asyncio")
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in (root, aio)]
    root.handlers.clear()
    out = io.StringIO()
    yield out
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
    logging.getLogger("enigma.testarea").setLevel(logging.NOTSET)


def test_line_has_level_area_message_and_quoted_facts(stream: io.StringIO) -> None:
    dlog.setup("info", stream=stream)
    logging.getLogger("enigma.manager").info("module %s active", "echo", extra={"kv": {"name": "echo", "why": "a b"}})
    line = stream.getvalue().strip()
    assert line.endswith(' info    manager: module echo active name=echo why="a b"')
    assert line[:4].isdigit()
    assert line[23] == "Z"


def test_per_area_level_overrides_the_global_one(stream: io.StringIO) -> None:
    dlog.setup("warning", {"testarea": "debug"}, stream=stream)
    logging.getLogger("enigma.testarea").debug("shown")
    logging.getLogger("enigma.other").info("hidden")
    assert "shown" in stream.getvalue()
    assert "hidden" not in stream.getvalue()


def test_setup_again_changes_levels_without_adding_handlers(stream: io.StringIO) -> None:
    dlog.setup("info", {"testarea": "error"}, stream=stream)
    dlog.setup("debug", {}, stream=stream)
    logging.getLogger("enigma.testarea").debug("once")
    assert stream.getvalue().count("once") == 1


def test_asyncio_warnings_use_the_same_format(stream: io.StringIO) -> None:
    dlog.setup("info", stream=stream)
    logging.getLogger("asyncio").warning("Executing <Handle cb()> took 0.120 seconds")
    assert " warning asyncio: Executing <Handle cb()> took 0.120 seconds" in stream.getvalue()
