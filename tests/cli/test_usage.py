"""Usage errors: exit 2 and one line that names the problem and points to --help."""

from __future__ import annotations

import json

from tests.cli.conftest import Run


def test_unknown_command_exits_2_with_one_line(enigma: Run) -> None:
    r = enigma("frobnicate")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("enigma: argument COMMAND: invalid choice: 'frobnicate'")
    assert lines[0].endswith("(see: enigma --help)")


def test_missing_argument_exits_2(enigma: Run) -> None:
    r = enigma("modules", "load")
    assert r.returncode == 2
    assert "the following arguments are required: name" in r.stderr
    assert "(see: enigma modules load --help)" in r.stderr


def test_bad_number_exits_2(enigma: Run) -> None:
    r = enigma("events", "--count", "-3")
    assert r.returncode == 2
    assert "argument --count: must be 0 or more, got -3" in r.stderr


def test_non_positive_timeout_exits_2_and_reports_json(enigma: Run) -> None:
    r = enigma("ping", "--timeout", "0", "--json")
    assert r.returncode == 2
    assert r.stderr == "enigma: --timeout must be a positive number of seconds, got 0\n"
    assert json.loads(r.stdout) == {
        "error": {"code": "usage", "message": "--timeout must be a positive number of seconds, got 0", "exit": 2}
    }


def test_no_command_prints_help_and_succeeds(enigma: Run) -> None:
    r = enigma()
    assert r.returncode == 0
    assert r.stdout.startswith("usage: enigma")


def test_global_options_work_after_the_command(enigma: Run) -> None:
    r = enigma("keys", "--show", "--json")
    assert r.returncode == 1  # no key yet; the point is that --json after the command was honoured
    assert json.loads(r.stdout)["error"]["code"] == "no_key"
