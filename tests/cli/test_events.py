"""``enigma events`` and ``enigma publish`` against a real enigmad."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from collections.abc import Callable

from tests.cli.conftest import Run

Popen = Callable[..., subprocess.Popen[str]]


def _wait_for_stderr_line(proc: subprocess.Popen[str], needle: str, timeout: float = 15.0) -> str:
    """Block until the process writes a stderr line containing ``needle`` (the tail's "listening" note)."""
    found: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if needle in line:
                found.append(line)
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"no {needle!r} on stderr within {timeout}s"
    assert found, f"stderr closed without {needle!r} (exit code {proc.poll()})"
    return found[0]


def test_replay_prints_recent_events_and_count_stops_the_tail(cli: Run) -> None:
    assert cli("modules", "load", "echo").returncode == 0
    r = cli("events", "module.", "--replay", "3", "--count", "3", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(e["topic"], e["body"], e["replayed"]) for e in lines] == [
        ("module.state", {"name": "echo", "state": s}, True) for s in ("loading", "loaded", "active")
    ]


def test_published_event_is_printed_by_a_running_tail(cli: Run, cli_popen: Popen) -> None:
    tail = cli_popen("events", "test.", "--count", "1", "--json", "--verbose")
    note = _wait_for_stderr_line(tail, "listening")
    assert note.startswith("enigma: listening for test.* on ")
    pub = cli("publish", "test.door", "open=true", "who=cat")
    assert pub.returncode == 0, pub.stderr
    assert pub.stdout == "published test.door\n"
    out, _ = tail.communicate(timeout=15)
    assert tail.returncode == 0
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["topic"] == "test.door"
    assert event["body"] == {"open": True, "who": "cat"}
    assert isinstance(event["ts"], float)


def test_tail_human_lines_show_time_topic_and_body(cli: Run, cli_popen: Popen) -> None:
    tail = cli_popen("events", "test.", "--count", "1", "--verbose")
    _wait_for_stderr_line(tail, "listening")
    assert cli("publish", "test.door", "open=true").returncode == 0
    out, _ = tail.communicate(timeout=15)
    assert tail.returncode == 0
    time_part, rest = out.rstrip("\n").split(" ", 1)
    assert len(time_part) == len("12:34:56.789")
    assert rest.split() == ["test.door", "open=yes"]


def test_tail_filters_by_prefix(cli: Run, cli_popen: Popen) -> None:
    tail = cli_popen("events", "test.b", "--count", "1", "--json", "--verbose")
    _wait_for_stderr_line(tail, "listening")
    assert cli("publish", "test.a", "n=1").returncode == 0
    assert cli("publish", "test.b", "n=2").returncode == 0
    out, _ = tail.communicate(timeout=15)
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["test.b"]


def test_interrupted_tail_exits_130(cli_popen: Popen) -> None:
    tail = cli_popen("events", "--verbose")
    _wait_for_stderr_line(tail, "listening")
    tail.send_signal(signal.SIGINT)
    _, err = tail.communicate(timeout=15)
    assert tail.returncode == 130
    assert "Traceback" not in err


def test_publish_on_a_reserved_topic_exits_1_forbidden(cli: Run) -> None:
    r = cli("publish", "sys.fake", "--json")
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"]["code"] == "forbidden"
    assert r.stderr == "enigma: topic 'sys.fake' is reserved for the daemon (prefixes sys., module.) (forbidden)\n"


def test_publish_malformed_pair_is_a_usage_error(cli: Run) -> None:
    r = cli("publish", "test.x", "novalue")
    assert r.returncode == 2
    assert r.stderr == "enigma: expected KEY=VALUE, got 'novalue'\n"


def test_publish_body_must_be_a_json_object(cli: Run) -> None:
    r = cli("publish", "test.x", "--body", "[1, 2]")
    assert r.returncode == 2
    assert r.stderr == "enigma: --body must be a JSON object, got list\n"


def test_wrong_event_endpoint_exits_3_naming_it(cli: Run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        events = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    r = cli("events", "--events", events, "--timeout", "1")
    assert r.returncode == 3
    assert r.stderr == (
        f"enigma: no events from {events} (not even heartbeats) — is --events the daemon's event endpoint?\n"
    )


def test_tail_of_everything_hides_heartbeats(cli: Run, cli_popen: Popen) -> None:
    tail = cli_popen("events", "--count", "1", "--json", "--verbose")
    _wait_for_stderr_line(tail, "listening")  # heartbeats (every 0.25 s here) have been flowing since
    assert cli("publish", "test.after", "n=1").returncode == 0
    out, _ = tail.communicate(timeout=15)
    assert [json.loads(line)["topic"] for line in out.splitlines()] == ["test.after"]


def test_heartbeats_are_shown_when_asked_for_by_prefix(cli: Run) -> None:
    r = cli("events", "sys.heartbeat", "--count", "1", "--json")
    assert r.returncode == 0, r.stderr
    (event,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert event["topic"] == "sys.heartbeat"
    assert set(event["body"]) == {"node_id", "boot_id", "ts"}
