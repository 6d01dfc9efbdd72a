"""``enigma ask|chat|sessions`` as a user runs them (subprocesses), against a daemon whose LLM is the fake
Ollama server, so the command-line behaviour is tested without loading a model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess
from tests.serve.conftest import FakeOllamaThread, StartDaemon
from tests.serve.test_chat_bus import REPLY, _config

ENIGMA = str(Path(sys.executable).parent / "enigma")


@pytest.fixture(scope="module")
def daemon(module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread) -> DaemonProcess:
    return module_daemon_factory(_config(fake_ollama.url, context=4096))


@pytest.fixture(autouse=True)
def _reset_fake(fake_ollama: FakeOllamaThread) -> Iterator[None]:
    fake_ollama.configure(reply_tokens=list(REPLY), hold=False, done_reason="stop", models=["smollm2:135m"])
    yield
    fake_ollama.release()


@pytest.fixture
def env(tmp_path: Path, daemon: DaemonProcess) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    e.update(ENIGMA_RPC=daemon.rpc, ENIGMA_EVENTS=daemon.events, NO_COLOR="1", XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    return e


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENIGMA, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def last_chat(fake: FakeOllamaThread) -> dict:
    return [b for _, p, b in fake.requests if p == "/api/chat"][-1]


# -- ask ------------------------------------------------------------------------------------------------------
def test_ask_prints_only_the_answer(env: dict[str, str]) -> None:
    r = run(env, "ask", "What is the capital of France?")
    assert (r.returncode, r.stdout, r.stderr) == (0, "The capital is Paris.\n", "")


def test_ask_reads_the_question_from_piped_stdin(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    r = run(env, "ask", "Summarise:", stdin="a long text\n")
    assert r.returncode == 0
    assert last_chat(fake_ollama)["messages"] == [{"role": "user", "content": "Summarise:\n\na long text"}]


def test_ask_json_prints_chunks_then_the_end(env: dict[str, str]) -> None:
    r = run(env, "--json", "ask", "hi", "--max-tokens", "2")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert lines[:2] == [{"text": "The"}, {"text": " capital"}]
    assert lines[2]["end"]["usage"]["completion_tokens"] == 2


def test_ask_passes_sampling_flags(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    run(env, "ask", "hi", "--temperature", "0", "--seed", "3", "--stop", "\n")
    opts = last_chat(fake_ollama)["options"]
    assert (opts["temperature"], opts["seed"], opts["stop"]) == (0.0, 3, ["\n"])


def test_ask_is_greedy_unless_told_otherwise(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    run(env, "ask", "hi")
    assert last_chat(fake_ollama)["options"]["temperature"] == 0.0
    run(env, "call", "persona.set", "name=warm", "system_prompt=x", 'sampling={"temperature": 0.8}')
    run(env, "ask", "--persona", "warm", "hi")
    assert last_chat(fake_ollama)["options"]["temperature"] == 0.8


def test_ask_with_a_persona_sends_its_system_prompt(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    run(env, "call", "persona.set", "name=poet", "system_prompt=Answer in verse.")
    r = run(env, "ask", "--persona", "poet", "hi")
    assert r.returncode == 0, r.stderr
    assert last_chat(fake_ollama)["messages"][0] == {"role": "system", "content": "Answer in verse."}


def test_ask_without_a_question_is_a_usage_error(env: dict[str, str]) -> None:
    r = run(env, "ask")
    assert r.returncode == 2
    assert "nothing to ask" in r.stderr


def test_ask_with_bad_sampling_value_fails_with_the_field(env: dict[str, str]) -> None:
    r = run(env, "ask", "hi", "--temperature", "-2")
    assert r.returncode == 1
    assert r.stderr == "enigma: llm.chat: temperature: -2.0 is less than the minimum of 0 (bad_request)\n"


def test_ask_into_an_unknown_session_is_not_found(env: dict[str, str]) -> None:
    r = run(env, "ask", "--session", "nope", "hi")
    assert r.returncode == 1
    assert r.stderr == "enigma: no such session: nope (not_found)\n"


def test_ask_into_a_session_stores_the_exchange(env: dict[str, str]) -> None:
    sid = json.loads(run(env, "--json", "call", "session.new").stdout)["id"]
    assert run(env, "ask", "--session", sid, "hello").returncode == 0
    shown = run(env, "sessions", "show", sid)
    assert "user:\nhello" in shown.stdout
    assert "assistant:\nThe capital is Paris." in shown.stdout


def test_ask_without_the_llm_module_says_which_module_to_load(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread, env: dict[str, str]
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url, autoload='"chat"'))
    r = run({**env, "ENIGMA_RPC": d.rpc, "ENIGMA_EVENTS": d.events}, "ask", "hi")
    assert r.returncode == 1
    assert r.stderr == (
        "enigma: unknown method 'llm.chat': the llm module is not loaded — load it with: enigma modules load llm\n"
    )


# -- chat -----------------------------------------------------------------------------------------------------
def test_chat_from_a_pipe_answers_each_line_and_stores_the_session(env: dict[str, str]) -> None:
    r = run(env, "--json", "chat", stdin="first\nsecond\n/history\n/quit\n")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["The capital is Paris.", "The capital is Paris."]
    assert out[2:] == [
        "user: first",
        "assistant: The capital is Paris.",
        "user: second",
        "assistant: The capital is Paris.",
    ]


def test_chat_slash_new_and_sessions(env: dict[str, str]) -> None:
    r = run(env, "chat", stdin="hello\n/new second\n/sessions\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    new_id = lines[1].removeprefix("new session ")
    listed = [line for line in lines[2:] if line.startswith("*")]
    assert listed == [f"* {new_id}     0 msgs  second"]


def test_chat_persona_command_switches_the_system_prompt(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    run(env, "call", "persona.set", "name=chef", "system_prompt=You are a chef.")
    r = run(env, "chat", stdin="/persona chef\nwhat to cook?\n/persona nobody\n")
    assert "persona chef (applies from the next message)" in r.stdout
    assert last_chat(fake_ollama)["messages"][0] == {"role": "system", "content": "You are a chef."}
    assert "error: no such persona: nobody (not_found)" in r.stdout


def test_chat_regenerate_replaces_the_answer(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    r = run(env, "chat", stdin="q\n/history\n")
    assert r.returncode == 0
    r = run(env, "chat", stdin="q\n/regenerate\n/history\n")
    assert r.stdout.splitlines()[-2:] == ["user: q", "assistant: The capital is Paris."]


def test_chat_unknown_session_fails_at_start(env: dict[str, str]) -> None:
    r = run(env, "chat", "--session", "nope", stdin="hi\n")
    assert r.returncode == 1
    assert r.stderr == "enigma: no such session: nope (not_found)\n"


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float = 20.0) -> bytes:
    """Read the process's stdout until ``marker`` appears (raw bytes: the answer has no newline yet)."""
    assert proc.stdout is not None
    buf = b""
    found = threading.Event()

    def reader() -> None:
        nonlocal buf
        assert proc.stdout is not None
        while marker not in buf:
            data = os.read(proc.stdout.fileno(), 4096)
            if not data:
                break
            buf += data
        found.set()

    threading.Thread(target=reader, daemon=True).start()
    assert found.wait(timeout), f"{marker!r} never appeared; got {buf!r}"
    return buf


def test_ctrl_c_cancels_the_answer_and_stays_in_the_chat(env: dict[str, str], fake_ollama: FakeOllamaThread) -> None:
    fake_ollama.configure(hold=True)
    proc = subprocess.Popen(
        [ENIGMA, "chat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"tell me\n")
        proc.stdin.flush()
        _read_until(proc, b"The")
        proc.send_signal(signal.SIGINT)
        _read_until(proc, b"[cancelled]")
        proc.stdin.write(b"/history\n/quit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert b"assistant: The [incomplete]" in out


# -- sessions -------------------------------------------------------------------------------------------------
def test_sessions_list_show_and_rm(env: dict[str, str]) -> None:
    run(env, "chat", stdin="/new my title\nhello there\n")
    listed = json.loads(run(env, "--json", "sessions", "list").stdout)["sessions"]
    sid = next(s["id"] for s in listed if s["title"] == "my title")
    assert "hello there" in run(env, "sessions", "show", sid).stdout
    r = run(env, "sessions", "rm", sid)
    assert r.stdout == f"deleted session {sid} (2 messages)\n"
    r = run(env, "sessions", "show", sid)
    assert r.returncode == 1
    assert r.stderr == f"enigma: no such session: {sid} (not_found)\n"
