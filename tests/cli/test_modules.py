"""``enigma modules list|load|unload`` against a real enigmad."""

from __future__ import annotations

import json

from tests.cli.conftest import Run


def _states(cli: Run) -> dict[str, str]:
    r = cli("modules", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {m["name"]: m["state"] for m in json.loads(r.stdout)["modules"]}


def test_list_json_has_every_known_module_with_its_declaration(cli: Run) -> None:
    r = cli("modules", "list", "--json")
    assert r.returncode == 0, r.stderr
    echo = next(m for m in json.loads(r.stdout)["modules"] if m["name"] == "echo")
    assert echo["state"] == "unloaded"
    assert echo["provides"] == ["echo.say", "echo.count"]


def test_modules_alone_lists_them_as_an_aligned_table(cli: Run) -> None:
    r = cli("modules")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "DEPENDS", "DESCRIPTION"]
    echo = next(line for line in lines if line.startswith("echo "))
    assert echo.index("unloaded") == lines[0].index("STATE")


def test_load_makes_the_module_active(cli: Run) -> None:
    r = cli("modules", "load", "echo", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"name": "echo", "state": "active", "loaded": ["echo"]}
    assert _states(cli)["echo"] == "active"


def test_load_human_output_says_what_happened(cli: Run) -> None:
    r = cli("modules", "load", "echo")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "loaded echo (active)\n"


def test_unload_makes_the_module_unloaded(cli: Run) -> None:
    assert cli("modules", "load", "echo").returncode == 0
    r = cli("modules", "unload", "echo", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"name": "echo", "state": "unloaded"}
    assert _states(cli)["echo"] == "unloaded"


def test_load_unknown_module_exits_1_with_the_daemons_message(cli: Run) -> None:
    r = cli("modules", "load", "no-such-module")
    assert r.returncode == 1
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("enigma: no module named 'no-such-module' (known: ")
    assert r.stderr.endswith(") (not_found)\n")
    assert cli("ping").returncode == 0


def test_load_unknown_module_json_error_is_an_object_on_stdout(cli: Run) -> None:
    r = cli("modules", "load", "no-such-module", "--json")
    assert r.returncode == 1
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "not_found"
    assert err["exit"] == 1
    assert err["message"].startswith("no module named 'no-such-module'")


def test_unload_unknown_module_exits_1_not_found(cli: Run) -> None:
    r = cli("modules", "unload", "no-such-module", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == "not_found"
    assert r.stderr.startswith("enigma: no module named 'no-such-module'")
