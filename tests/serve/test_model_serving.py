"""Serving the real default model (SmolLM2-135M-Instruct) through a real daemon: the session's ``serving_daemon``
serves the module's tests (a model load is the expensive part); the crash test starts its own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk import BadRequest, Client, Conflict, Forbidden, NotFound, TooLarge
from tests.conftest import ROOT, SERVING_CONFIG, DaemonProcess
from tests.serve.conftest import StartDaemon, send_chat

pytestmark = [pytest.mark.model, pytest.mark.slow]

CHAT_ONLY = '[modules]\nautoload = ["chat"]\n'
# Worded as tests/serve/test_llamacpp_backend.py words it: kernels that quantize activations to int8 (llama.cpp's,
# and enigma's avx2/neon sets) answer "What is the capital of France?" greedily with a drift into French nouns.
FRANCE = "Name the capital of France."


@pytest.fixture
def daemon(serving_daemon: DaemonProcess) -> DaemonProcess:
    """The session's daemon with the default model, eager: the compiled decode step (about five minutes to build for
    SmolLM2 on two cores) is tested on a tiny model in tests/engine/test_aot.py."""
    return serving_daemon


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[Client]:
    async with Client(daemon.rpc, daemon.events, timeout=120.0) as c:
        yield c


async def test_ask_answers_the_france_question_with_paris(client: Client) -> None:
    chunks, end = await send_chat(client, {"text": FRANCE, "temperature": 0, "max_tokens": 24})
    assert "Paris" in "".join(chunks)
    assert end["usage"]["finish_reason"] == "stop"
    assert end["usage"]["model"] == "smollm2-135m-instruct"
    history = (await client.call("session.history", {"id": end["session_id"]}))["messages"]
    assert history[-1]["text"] == "".join(chunks)
    assert history[-1]["complete"] is True
    assert history[-1]["tokens"] == end["usage"]["completion_tokens"]


async def test_llm_generate_streams_a_raw_prompt(client: Client) -> None:
    async with client.stream("llm.generate", {"prompt": "One, two, three,", "temperature": 0, "max_tokens": 6}) as s:
        chunks = [c["text"] async for c in s]
    assert s.result is not None
    usage = s.result["usage"]
    assert (usage["completion_tokens"], usage["finish_reason"]) == (6, "length")
    assert usage["prompt_tokens"] == 6
    assert "four" in "".join(chunks).lower()


async def test_two_concurrent_streams_interleave_and_both_answer(client: Client) -> None:
    first_chunk_at: dict[int, float] = {}
    ended_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()

    async def one(i: int) -> str:
        parts = []
        async with client.stream("chat.send", {"text": FRANCE, "temperature": 0, "max_tokens": 24}) as s:
            async for c in s:
                first_chunk_at.setdefault(i, loop.time())
                parts.append(c["text"])
        ended_at[i] = loop.time()
        return "".join(parts)

    a, b = await asyncio.gather(one(0), one(1))
    assert "Paris" in a
    assert "Paris" in b
    # Both were streaming at the same time: each got its first chunk before the other finished.
    assert first_chunk_at[0] < ended_at[1]
    assert first_chunk_at[1] < ended_at[0]


async def test_32_concurrent_streaming_clients_finish_without_cross_talk(daemon: DaemonProcess) -> None:
    # Four questions the model answers correctly when greedy; a reply naming another city would be cross-talk.
    capitals = {"France": "Paris", "Germany": "Berlin", "Japan": "Tokyo", "Egypt": "Cairo"}
    countries = list(capitals)

    async def one(i: int) -> tuple[str, str, str, dict[str, Any]]:
        text = f"What is the capital of {countries[i % 4]}?"
        async with Client(daemon.rpc, daemon.events, timeout=180.0) as c:
            session = await c.call("session.new", {"title": f"client {i}"})
            body = {"session_id": session["id"], "text": text, "temperature": 0, "max_tokens": 12}
            async with c.stream("chat.send", body) as s:
                streamed = "".join([ch["text"] async for ch in s])
            assert s.result is not None
            history = await c.call("session.history", {"id": session["id"]})
        return session["id"], countries[i % 4], streamed, {"end": s.result, "history": history["messages"]}

    results = await asyncio.gather(*(one(i) for i in range(32)))
    message_ids = set()
    for sid, country, streamed, got in results:
        assert capitals[country] in streamed
        assert not [city for city in capitals.values() if city != capitals[country] and city in streamed]
        assert got["end"]["session_id"] == sid
        history = got["history"]
        assert [(m["role"], m["session_id"]) for m in history] == [("user", sid), ("assistant", sid)]
        assert history[0]["text"] == f"What is the capital of {country}?"
        assert history[1]["text"] == streamed
        assert history[1]["complete"] is True
        assert history[1]["id"] == got["end"]["message_id"]
        message_ids.add(history[1]["id"])
    assert len(message_ids) == 32


async def test_client_killed_mid_stream_cancels_its_generation(daemon: DaemonProcess, client: Client) -> None:
    before = await client.call("llm.stats", {})
    # Counting keeps a small model going until max_tokens: the stream is certainly still running when killed.
    body = json.dumps({"prompt": "1, 2, 3, 4, 5,", "temperature": 0, "repetition_penalty": 1.0, "max_tokens": 400})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.serve.stream_client",
        daemon.rpc,
        daemon.events,
        "llm.generate",
        body,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with client.subscribe("llm.state") as states:
            await states.live()
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"chunk"
            proc.kill()
            await proc.wait()

            async def idle() -> None:
                async for ev in states:
                    if ev.body["state"] == "ready" and ev.body["active"] == 0 and ev.body["queue"] == 0:
                        return

            await asyncio.wait_for(idle(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    after = await client.call("llm.stats", {})
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]
    assert after["completion_tokens"] - before["completion_tokens"] < 400
    _, end = await send_chat(client, {"text": FRANCE, "temperature": 0, "max_tokens": 12})  # still serving
    assert end["usage"]["finish_reason"] in ("stop", "length")


async def test_context_overflow_drops_oldest_turns_and_keeps_the_persona(client: Client) -> None:
    await client.call("persona.set", {"name": "geo", "system_prompt": "You are a geography teacher."})
    session = await client.call("session.new", {"persona": "geo"})
    filler = "Tell me about rivers, mountains and lakes of Europe. " * 12
    usages = []
    for i in range(4):
        _, end = await send_chat(
            client, {"session_id": session["id"], "text": f"Turn {i}. {filler}", "temperature": 0, "max_tokens": 4}
        )
        usages.append(end["usage"]["context"])
    assert usages[0]["truncated"] is False
    last = usages[-1]
    assert last["truncated"] is True
    assert last["dropped_messages"] >= 2
    assert last["prompt_tokens"] + last["reserved_for_reply"] <= 512


async def test_native_defaults_are_the_model_card_sampling(client: Client) -> None:
    stats = await client.call("llm.stats", {})
    assert stats["sampling"] == {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1, "max_tokens": 512}


async def test_generate_prompt_longer_than_the_context_is_too_large(client: Client) -> None:
    with pytest.raises(TooLarge, match="exceeds the context length 512"):
        async with client.stream("llm.generate", {"prompt": "word " * 600, "max_tokens": 4}) as s:
            [c async for c in s]


async def test_bad_sampling_value_in_generate_is_bad_request(client: Client) -> None:
    with pytest.raises(
        BadRequest, match=r"llm\.generate: repetition_penalty: 0 is less than or equal to the minimum of 0"
    ):
        async with client.stream("llm.generate", {"prompt": "hi", "repetition_penalty": 0}) as s:
            [c async for c in s]


async def test_model_list_marks_the_default_model_loaded(client: Client) -> None:
    models = (await client.call("model.list", {}))["models"]
    default = [m for m in models if m["default"]]
    assert [m["name"] for m in default] == ["smollm2-135m-instruct"]
    assert default[0]["loaded"] is True


async def test_model_show_describes_the_default_model(client: Client) -> None:
    info = await client.call("model.show", {"name": "smollm2-135m-instruct"})
    assert (info["format"], info["arch"]) == ("gguf", "llama")


async def test_the_served_model_runs_this_cpus_kernels_and_reports_its_compiled_step(
    client: Client, daemon: DaemonProcess
) -> None:
    from engine import kernels

    llm = next(m for m in (await client.call("module.list"))["modules"] if m["name"] == "llm")
    info = llm["info"]
    assert (info["kernels"]["mode"], info["kernels"]["kernel"]) == ("gguf", kernels.choose() or "torch")
    # The suite's daemons serve eagerly (tests/conftest.py turns the background build off: it would take both cores
    # for minutes); the module says so, and why.
    assert (info["compiled"], info["compile_reason"]) == (False, "off"), info


@pytest.mark.parametrize(
    ("method", "body", "error", "message"),
    [
        ("model.load", {"name": "no-such-model"}, NotFound, "no model named 'no-such-model'"),
        ("model.show", {"name": "no-such-model"}, NotFound, "no model named 'no-such-model'"),
        ("model.remove", {"name": "no-such-model"}, NotFound, "no model named 'no-such-model'"),
        ("model.remove", {"name": "smollm2-135m-instruct"}, Forbidden, "packaged default model"),
        ("model.add", {"path": "/nonexistent/model.gguf"}, NotFound, "no such model file or directory"),
    ],
)
async def test_model_error_paths(client: Client, method: str, body: dict[str, Any], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        await client.call(method, body)
    assert (await client.call("llm.stats", {}))["state"] in ("ready", "busy")


async def test_model_add_load_and_remove_switch_the_serving_model(client: Client) -> None:
    default = next(m for m in (await client.call("model.list", {}))["models"] if m["default"])
    added = await client.call("model.add", {"path": default["path"], "name": "smol-copy"})
    assert (added["name"], added["format"]) == ("smol-copy", "gguf")
    try:
        async with client.subscribe("llm.state") as states:
            await states.live()
            loaded = await client.call("model.load", {"name": "smol-copy"}, timeout=120)
            seen = [(await asyncio.wait_for(anext(states), 30)).body["state"] for _ in range(2)]
        assert seen == ["loading", "ready"]
        assert loaded["loaded"] == "smol-copy"
        assert (await client.call("llm.stats", {}))["model"] == "smol-copy"
        marked = {m["name"]: m["loaded"] for m in (await client.call("model.list", {}))["models"]}
        assert marked == {"smollm2-135m-instruct": False, "smol-copy": True}
        with pytest.raises(Conflict, match="model 'smol-copy' is loaded; load another model before removing it"):
            await client.call("model.remove", {"name": "smol-copy"})
        _, end = await send_chat(client, {"text": FRANCE, "temperature": 0, "max_tokens": 12})
        assert end["usage"]["model"] == "smol-copy"
    finally:  # the daemon is shared: a failure here must not leave the copy serving the next test
        await client.call("model.load", {"name": "smollm2-135m-instruct"}, timeout=120)
    assert await client.call("model.remove", {"name": "smol-copy"}) == {"removed": "smol-copy"}
    assert [m["name"] for m in (await client.call("model.list", {}))["models"]] == ["smollm2-135m-instruct"]


async def test_sigkill_during_a_reply_keeps_the_history_with_the_reply_incomplete(
    module_daemon_factory: StartDaemon,
) -> None:
    d = module_daemon_factory(SERVING_CONFIG)
    received = []
    async with Client(d.rpc, d.events, timeout=120.0) as c:
        session = await c.call("session.new", {"title": "crash"})
        body = {"session_id": session["id"], "text": "Write a long story about a dragon.", "max_tokens": 300}
        async with c.stream("chat.send", body) as s:
            async for chunk in s:
                received.append(chunk["text"])
                if len(received) == 3:
                    d.stop(signal.SIGKILL)
                    break
    # Reading the history back needs the chat module only: no second load of the model.
    again = module_daemon_factory(CHAT_ONLY, data_dir=d.data_dir)
    async with Client(again.rpc, again.events, timeout=60.0) as c:
        history = (await c.call("session.history", {"id": session["id"]}))["messages"]
    assert [(m["role"], m["complete"]) for m in history] == [("user", True), ("assistant", False)]
    assert history[0]["text"] == "Write a long story about a dragon."
    assert history[1]["text"].startswith("".join(received))


def _enigma(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENIGMA_")}
    env.update(ENIGMA_RPC=daemon.rpc, ENIGMA_EVENTS=daemon.events, NO_COLOR="1")
    enigma = str(Path(sys.executable).parent / "enigma")
    return subprocess.run(
        [enigma, *args], capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL
    )


def test_cli_ask_answers_with_paris(daemon: DaemonProcess) -> None:
    r = _enigma(daemon, "ask", FRANCE)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert r.stderr == ""


def test_cli_models_list_marks_the_loaded_model(daemon: DaemonProcess) -> None:
    r = _enigma(daemon, "models", "list")
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "smollm2-135m-instruct" in x)
    assert line.startswith("*")
    assert "llama" in line


def test_cli_models_show_describes_the_default_model(daemon: DaemonProcess) -> None:
    r = _enigma(daemon, "models", "show", "smollm2-135m-instruct")
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line)
    assert (fields["format"], fields["arch"]) == ("gguf", "llama")


def test_cli_models_rm_of_the_default_model_is_refused(daemon: DaemonProcess) -> None:
    r = _enigma(daemon, "models", "rm", "smollm2-135m-instruct")
    assert r.returncode == 1
    assert "packaged default model and cannot be removed (forbidden)" in r.stderr
