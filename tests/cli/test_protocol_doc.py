"""docs/protocol.md cannot drift: its worked example runs against a real daemon, and it documents every method.

The example is the fenced block between the ``protocol-example`` markers; it is run unchanged as a script with
nothing but pyzmq and msgpack, pointed at the daemon through ENIGMA_RPC/ENIGMA_EVENTS as the page says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.conftest import Run
from tests.conftest import StartDaemon, clean_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BEGIN, END = "<!-- protocol-example: begin -->", "<!-- protocol-example: end -->"


def example_code() -> str:
    text = DOC.read_text()
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    assert block.startswith("```python\n")
    assert block.endswith("\n```")
    return block[len("```python\n") : -len("```")]


def documented_headings() -> set[str]:
    return set(re.findall(r"^####+ `([a-z0-9_.]+)`", DOC.read_text(), flags=re.MULTILINE))


def test_worked_example_runs_against_a_real_daemon(daemon_factory: StartDaemon, tmp_path: Path) -> None:
    # A short heartbeat only makes the example's "wait for the subscription" step quicker.
    daemon = daemon_factory(env={"ENIGMA_DAEMON__HEARTBEAT": "0.2"})
    script = tmp_path / "client.py"
    script.write_text(example_code())
    env = clean_env(tmp_path, {"ENIGMA_RPC": daemon.rpc, "ENIGMA_EVENTS": daemon.events})
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ping",
        "status",
        "module.state",
        "stream",
        "cancel",
        "error",
        "done",
    ]
    assert lines[2] == "module.state: loading -> loaded -> active"
    assert lines[3] == "stream: [0, 1, 2, 3, 4] end {'count': 5}"
    assert lines[4] == "cancel: cancelled by the client"
    assert lines[5].startswith("error: not_found: no module named 'no-such-module'")


def test_example_uses_only_pyzmq_and_msgpack() -> None:
    imports = set(re.findall(r"^(?:import|from) ([a-z_]+)", example_code(), flags=re.MULTILINE))
    assert imports == {"os", "time", "uuid", "msgpack", "zmq"}


def test_every_core_method_is_documented(cli: Run) -> None:
    r = cli("methods", "--json")
    assert r.returncode == 0, r.stderr
    core = {m["method"] for m in json.loads(r.stdout)["methods"]}
    assert core  # the daemon answered with its methods
    assert sorted(core - documented_headings()) == []


def test_every_module_method_is_documented(cli: Run) -> None:
    r = cli("modules", "list", "--json")
    assert r.returncode == 0, r.stderr
    provided = {m for mod in json.loads(r.stdout)["modules"] for m in mod["provides"]}
    assert "echo.count" in provided
    assert sorted(provided - documented_headings()) == []


@pytest.mark.parametrize(
    "topic",
    ["sys.heartbeat", "sys.started", "sys.loaded", "sys.stopping", "sys.reloaded", "sys.restored", "module.state"],
)
def test_every_core_event_is_documented(topic: str) -> None:
    assert f"| `{topic}` |" in DOC.read_text()


def test_every_error_code_is_documented() -> None:
    from bus.errors import ErrorCode

    text = DOC.read_text()
    assert [c.value for c in ErrorCode if f"| `{c.value}` |" not in text] == []
