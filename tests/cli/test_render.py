"""The renderer: aligned tables, colour only on a terminal, one JSON document or JSON lines."""

from __future__ import annotations

import io
import json

from clients.cli.render import Column, Fields, Group, Renderer, Table, Text, duration, plain


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


ROWS = [{"name": "echo", "state": "active", "n": 3}, {"name": "llm-native", "state": "failed", "n": 12}]
COLUMNS = [Column("name", "NAME"), Column("state", "STATE", state=True), Column("n", "N", right=True)]


def test_table_columns_are_aligned_to_the_widest_cell() -> None:
    out = io.StringIO()
    Renderer(out=out, colour=False).show(Table(COLUMNS, ROWS))
    assert out.getvalue().splitlines() == [
        "NAME        STATE    N",
        "echo        active   3",
        "llm-native  failed  12",
    ]


def test_states_are_coloured_on_a_terminal(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = _Tty()
    Renderer(out=out).show(Table(COLUMNS, ROWS))
    text = out.getvalue()
    assert "\x1b[32mactive\x1b[0m" in text
    assert "\x1b[1;31mfailed\x1b[0m" in text


def test_no_colour_when_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    Renderer(out=out).show(Table(COLUMNS, ROWS))
    assert "\x1b[" not in out.getvalue()


def test_no_colour_on_a_terminal_when_no_color_is_set(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("NO_COLOR", "1")
    out = _Tty()
    Renderer(out=out).show(Table(COLUMNS, ROWS))
    assert "\x1b[" not in out.getvalue()


def test_json_mode_prints_one_document_with_the_data() -> None:
    out = io.StringIO()
    Renderer(json_mode=True, out=out).show(Table(COLUMNS, ROWS, data={"modules": ROWS}))
    assert json.loads(out.getvalue()) == {"modules": ROWS}


def test_group_is_one_json_document_and_blocks_in_human_mode() -> None:
    group = Group([Fields([("node", "a")]), Text("hello")], data={"node": "a"})
    out = io.StringIO()
    Renderer(out=out, colour=False).show(group)
    assert out.getvalue() == "node  a\n\nhello\n"
    out = io.StringIO()
    Renderer(json_mode=True, out=out).show(group)
    assert json.loads(out.getvalue()) == {"node": "a"}


def test_stream_items_are_json_lines() -> None:
    out = io.StringIO()
    r = Renderer(json_mode=True, out=out)
    r.item({"topic": "a", "body": {"x": b"\x01\x02"}}, "ignored")
    r.item({"topic": "b", "body": {}}, "ignored")
    lines = out.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [{"topic": "a", "body": {"x": "0102"}}, {"topic": "b", "body": {}}]


def test_error_goes_to_stderr_and_as_json_object_to_stdout() -> None:
    out, err = io.StringIO(), io.StringIO()
    Renderer(json_mode=True, out=out, err=err).error("no such module: x (not_found)", code="not_found", exit_code=1)
    assert err.getvalue() == "enigma: no such module: x (not_found)\n"
    assert json.loads(out.getvalue()) == {
        "error": {"code": "not_found", "message": "no such module: x (not_found)", "exit": 1}
    }


def test_empty_table_says_so() -> None:
    out = io.StringIO()
    Renderer(out=out, colour=False).show(Table(COLUMNS, [], empty="(no modules)"))
    assert out.getvalue() == "(no modules)\n"


def test_plain_and_duration_are_readable() -> None:
    assert plain(None) == "-"
    assert plain(True) == "yes"
    assert plain(["a", "b"]) == "a, b"
    assert plain(0.5) == "0.5"
    assert plain({"name": "echo", "state": "active"}) == "name=echo state=active"
    assert duration(0.25) == "250 ms"
    assert duration(3 * 86400 + 4 * 3600 + 5) == "3d 4h"
    assert duration(65) == "1m 5s"


def test_last_column_is_cut_to_the_terminal_width(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "30")
    out = _Tty()
    rows = [{"name": "echo", "text": "a description far longer than thirty columns"}]
    Renderer(out=out, colour=False).show(Table([Column("name", "NAME"), Column("text", "TEXT")], rows))
    line = out.getvalue().splitlines()[1]
    assert len(line) == 30
    assert line.endswith("…")


def test_piped_output_keeps_long_cells_whole(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COLUMNS", "30")
    out = io.StringIO()
    rows = [{"name": "echo", "text": "a description far longer than thirty columns"}]
    Renderer(out=out, colour=False).show(Table([Column("name", "NAME"), Column("text", "TEXT")], rows))
    assert out.getvalue().splitlines()[1] == "echo  a description far longer than thirty columns"
