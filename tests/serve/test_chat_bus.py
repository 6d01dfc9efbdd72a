"""chat/session/persona over the real bus: a daemon subprocess with the ``ollama`` LLM module talking to a
fake Ollama server, so the serving path is tested end to end without loading a model."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from clients.sdk import BadRequest, Busy, Cancelled, Client, Conflict, NotFound, TooLarge, Unavailable
from tests.conftest import DaemonProcess
from tests.serve.conftest import FakeOllamaThread, StartDaemon, send_chat

REPLY = ["The", " capital", " is", " Paris", "."]


def _config(
    url: str, autoload: str = '"ollama", "chat"', context: int = 96, preload: bool = True, extra: str = ""
) -> str:
    return f"""
[modules]
autoload = [{autoload}]

[modules.ollama]
url = "{url}"
model = "smollm2:135m"
context_length = {context}
preload = {str(preload).lower()}
{extra}

[modules.chat]
flush_tokens = 1
"""


@pytest.fixture(scope="module")
def daemon(module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread) -> DaemonProcess:
    return module_daemon_factory(_config(fake_ollama.url))


@pytest.fixture(autouse=True)
def _reset_fake(fake_ollama: FakeOllamaThread) -> Iterator[None]:
    fake_ollama.configure(reply_tokens=list(REPLY), hold=False, done_reason="stop", models=["smollm2:135m"])
    fake_ollama.call(lambda: fake_ollama.server.requests.clear())  # type: ignore[union-attr]
    yield
    fake_ollama.release()


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[Client]:
    async with Client(daemon.rpc, daemon.events, timeout=20.0) as c:
        yield c


def _last_chat_request(fake: FakeOllamaThread) -> dict[str, Any]:
    chats = [body for _, path, body in fake.requests if path == "/api/chat"]
    assert chats, "the fake Ollama saw no /api/chat request"
    return chats[-1]


# -- chat.send ------------------------------------------------------------------------------------------------
async def test_send_streams_the_reply_and_stores_both_messages(client: Client) -> None:
    chunks, end = await send_chat(client, {"text": "What is the capital of France?", "temperature": 0})
    assert "".join(chunks) == "The capital is Paris."
    history = await client.call("session.history", {"id": end["session_id"]})
    roles = [(m["role"], m["text"], m["complete"]) for m in history["messages"]]
    assert roles == [("user", "What is the capital of France?", True), ("assistant", "The capital is Paris.", True)]
    assert history["messages"][1]["id"] == end["message_id"]
    assert history["messages"][0]["id"] == end["user_message_id"]
    assert end["usage"]["completion_tokens"] == 5
    assert end["usage"]["finish_reason"] == "stop"


async def test_send_continues_a_session_with_its_history(client: Client, fake_ollama: FakeOllamaThread) -> None:
    _, first = await send_chat(client, {"text": "hello"})
    await send_chat(client, {"session_id": first["session_id"], "text": "again"})
    sent = _last_chat_request(fake_ollama)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[-1]["content"] == "again"


async def test_sampling_options_pass_through_to_the_backend(client: Client, fake_ollama: FakeOllamaThread) -> None:
    await send_chat(client, {"text": "x", "temperature": 0.3, "top_p": 0.5, "max_tokens": 3, "seed": 7})
    options = _last_chat_request(fake_ollama)["options"]
    assert (options["temperature"], options["top_p"], options["num_predict"], options["seed"]) == (0.3, 0.5, 3, 7)


async def test_ollama_gets_no_sampling_it_was_not_asked_for(client: Client, fake_ollama: FakeOllamaThread) -> None:
    await send_chat(client, {"text": "x"})
    assert set(_last_chat_request(fake_ollama)["options"]) == {"num_predict", "num_ctx"}
    assert (await client.call("llm.stats", {}))["sampling"] == {"max_tokens": 512}


async def test_user_message_is_committed_before_the_reply_starts(client: Client, fake_ollama: FakeOllamaThread) -> None:
    fake_ollama.configure(hold=True)
    session = await client.call("session.new", {})
    async with client.stream("chat.send", {"session_id": session["id"], "text": "hold on"}) as s:
        first = await s.__anext__()
        assert first == {"text": "The", "tokens": 1}
        history = (await client.call("session.history", {"id": session["id"]}))["messages"]
        assert [(m["role"], m["text"], m["complete"]) for m in history] == [
            ("user", "hold on", True),
            ("assistant", "The", False),
        ]
        fake_ollama.release()
        rest = [c["text"] async for c in s]
    assert "".join(rest) == " capital is Paris."


async def test_cancel_keeps_the_partial_reply_marked_incomplete(client: Client, fake_ollama: FakeOllamaThread) -> None:
    fake_ollama.configure(hold=True)
    session = await client.call("session.new", {})
    async with client.subscribe("chat.message") as events:
        await events.live()
        async with client.stream("chat.send", {"session_id": session["id"], "text": "tell me"}) as s:
            assert await s.__anext__() == {"text": "The", "tokens": 1}
            await s.cancel()
            with pytest.raises(Cancelled):
                await s.__anext__()
        # The user message, then the finalised (incomplete) assistant message.
        bodies = [(await asyncio.wait_for(events.__anext__(), 10)).body for _ in range(2)]
    assert [(b["role"], b["complete"]) for b in bodies] == [("user", True), ("assistant", False)]
    assert bodies[1]["finish_reason"] == "cancelled"
    assert fake_ollama.wait_disconnected(), "cancelling the reply did not drop the Ollama connection"
    history = (await client.call("session.history", {"id": session["id"]}))["messages"]
    assert (history[-1]["text"], history[-1]["complete"]) == ("The", False)
    assert (history[-1]["model"], history[-1]["tokens"]) == ("smollm2:135m", 1)  # from llm.state, counted tokens


async def test_regenerate_replaces_the_last_reply(client: Client, fake_ollama: FakeOllamaThread) -> None:
    _, first = await send_chat(client, {"text": "q"})
    fake_ollama.configure(reply_tokens=["Other", " answer"])
    async with client.stream("chat.regenerate", {"session_id": first["session_id"]}) as s:
        text = "".join([c["text"] async for c in s])
    assert text == "Other answer"
    history = (await client.call("session.history", {"id": first["session_id"]}))["messages"]
    assert [(m["role"], m["text"]) for m in history] == [("user", "q"), ("assistant", "Other answer")]


async def test_regenerate_in_an_empty_session_is_bad_request(client: Client) -> None:
    session = await client.call("session.new", {})
    with pytest.raises(BadRequest, match=f"session {session['id']} has no user message to answer"):
        await client.call("chat.regenerate", {"session_id": session["id"]})


async def test_send_to_unknown_session_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="no such session: nope"):
        await send_chat(client, {"session_id": "nope", "text": "hi"})
    assert (await client.call("sys.ping", {}))["pong"] is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1, "temperature: -1 is less than the minimum of 0"),
        ("top_p", 0, "top_p: 0 is less than or equal to the minimum of 0"),
        ("max_tokens", 0, "max_tokens: 0 is less than the minimum of 1"),
        ("top_k", 1.5, "top_k: 1.5 is not of type 'integer'"),
        ("stop", "x", "stop: 'x' is not of type 'array'"),
    ],
)
async def test_bad_sampling_values_are_bad_request(client: Client, field: str, value: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        await send_chat(client, {"text": "hi", field: value})
    assert info.value.details == {"field": field}


async def test_empty_text_is_bad_request(client: Client) -> None:
    with pytest.raises(BadRequest, match=r"chat\.send: text: '' should be non-empty"):
        await send_chat(client, {"text": ""})


async def test_message_larger_than_the_context_window_is_too_large(client: Client) -> None:
    with pytest.raises(TooLarge, match="context window of 96 tokens"):
        await send_chat(client, {"text": "word " * 400, "max_tokens": 8})


async def test_context_overflow_drops_oldest_turns_but_keeps_the_system_prompt(
    client: Client, fake_ollama: FakeOllamaThread
) -> None:
    await client.call("persona.set", {"name": "terse", "system_prompt": "Answer in one word."})
    session = await client.call("session.new", {"persona": "terse"})
    for i in range(4):
        _, end = await send_chat(
            client, {"session_id": session["id"], "text": f"turn {i} " + "filler " * 20, "max_tokens": 8}
        )
    sent = _last_chat_request(fake_ollama)["messages"]
    assert sent[0] == {"role": "system", "content": "Answer in one word."}
    assert sent[1]["role"] == "user"
    assert not sent[1]["content"].startswith("turn 0")
    assert sent[-1]["content"].startswith("turn 3")
    context = end["usage"]["context"]
    assert context["truncated"] is True
    assert context["dropped_messages"] >= 2
    assert context["window"] == 96
    # Dropped from the prompt, not from the store.
    history = (await client.call("session.history", {"id": session["id"]}))["messages"]
    assert len(history) == 8


# -- sessions -------------------------------------------------------------------------------------------------
async def test_session_lifecycle(client: Client) -> None:
    s = await client.call("session.new", {"title": "plans"})
    assert (await client.call("session.get", {"id": s["id"]}))["title"] == "plans"
    renamed = await client.call("session.rename", {"id": s["id"], "title": "holiday plans"})
    assert renamed["title"] == "holiday plans"
    listed = (await client.call("session.list", {"limit": 1000}))["sessions"]
    assert s["id"] in [x["id"] for x in listed]
    assert await client.call("session.delete", {"id": s["id"]}) == {"deleted": s["id"], "messages": 0}
    with pytest.raises(NotFound, match=f"no such session: {s['id']}"):
        await client.call("session.get", {"id": s["id"]})


async def test_deleting_a_session_deletes_its_messages(client: Client) -> None:
    _, end = await send_chat(client, {"text": "bye"})
    assert await client.call("session.delete", {"id": end["session_id"]}) == {
        "deleted": end["session_id"],
        "messages": 2,
    }
    with pytest.raises(NotFound):
        await client.call("session.history", {"id": end["session_id"]})


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("session.get", {"id": "missing"}),
        ("session.rename", {"id": "missing", "title": "x"}),
        ("session.delete", {"id": "missing"}),
        ("session.history", {"id": "missing"}),
    ],
)
async def test_unknown_session_is_not_found(client: Client, method: str, body: dict[str, Any]) -> None:
    with pytest.raises(NotFound, match="no such session: missing"):
        await client.call(method, body)


async def test_session_list_orders_most_recent_first(client: Client) -> None:
    a = await client.call("session.new", {"title": "a"})
    b = await client.call("session.new", {"title": "b"})
    await send_chat(client, {"session_id": a["id"], "text": "bump"})
    ids = [x["id"] for x in (await client.call("session.list", {}))["sessions"]]
    assert ids.index(a["id"]) < ids.index(b["id"])


# -- personas -------------------------------------------------------------------------------------------------
async def test_persona_system_prompt_and_sampling_defaults_apply(client: Client, fake_ollama: FakeOllamaThread) -> None:
    await client.call(
        "persona.set",
        {"name": "pirate", "system_prompt": "Talk like a pirate.", "sampling": {"temperature": 0.9, "top_k": 5}},
    )
    await send_chat(client, {"text": "hi", "persona": "pirate", "top_k": 2})
    req = _last_chat_request(fake_ollama)
    assert req["messages"][0] == {"role": "system", "content": "Talk like a pirate."}
    assert (req["options"]["temperature"], req["options"]["top_k"]) == (0.9, 2)  # the request wins over the persona


async def test_persona_crud(client: Client) -> None:
    p = await client.call("persona.set", {"name": "tutor", "system_prompt": "Explain simply.", "description": "d"})
    assert (p["name"], p["system_prompt"], p["description"]) == ("tutor", "Explain simply.", "d")
    await client.call("persona.set", {"name": "tutor", "system_prompt": "Explain very simply."})
    assert (await client.call("persona.get", {"name": "tutor"}))["system_prompt"] == "Explain very simply."
    assert "tutor" in [x["name"] for x in (await client.call("persona.list", {}))["personas"]]
    assert await client.call("persona.delete", {"name": "tutor"}) == {"deleted": "tutor"}
    with pytest.raises(NotFound, match="no such persona: tutor"):
        await client.call("persona.get", {"name": "tutor"})


async def test_deleting_a_persona_in_use_is_conflict(client: Client) -> None:
    await client.call("persona.set", {"name": "busy", "system_prompt": "x"})
    await client.call("session.new", {"persona": "busy"})
    with pytest.raises(Conflict, match=r"persona 'busy' is used by 1 session\(s\)"):
        await client.call("persona.delete", {"name": "busy"})


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("persona.get", {"name": "ghost"}),
        ("persona.delete", {"name": "ghost"}),
        ("session.new", {"persona": "ghost"}),
    ],
)
async def test_unknown_persona_is_not_found(client: Client, method: str, body: dict[str, Any]) -> None:
    with pytest.raises(NotFound, match="no such persona: ghost"):
        await client.call(method, body)


async def test_persona_with_bad_sampling_is_bad_request(client: Client) -> None:
    with pytest.raises(BadRequest, match=r"persona\.set: sampling/temperature"):
        await client.call("persona.set", {"name": "hot", "system_prompt": "", "sampling": {"temperature": "hot"}})


async def test_persona_name_with_spaces_is_bad_request(client: Client) -> None:
    with pytest.raises(BadRequest, match=r"persona\.set: name: 'a b' does not match"):
        await client.call("persona.set", {"name": "a b", "system_prompt": ""})


# -- llm ------------------------------------------------------------------------------------------------------
async def test_llm_generate_streams_a_raw_prompt(client: Client, fake_ollama: FakeOllamaThread) -> None:
    async with client.stream("llm.generate", {"prompt": "Once upon a time", "max_tokens": 2}) as s:
        text = "".join([c["text"] async for c in s])
    assert text == "The capital"
    assert s.result is not None
    assert s.result["usage"]["completion_tokens"] == 2
    assert [p for _, p, _ in fake_ollama.requests][-1] == "/api/generate"


async def test_llm_chat_ending_with_an_assistant_message_is_bad_request(client: Client) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(BadRequest, match=r"llm\.chat: the last message must be from the user or the system"):
        async with client.stream("llm.chat", {"messages": messages}) as s:
            [c async for c in s]


async def test_llm_stats_counts_completed_and_cancelled(client: Client, fake_ollama: FakeOllamaThread) -> None:
    before = await client.call("llm.stats", {})
    await send_chat(client, {"text": "one"})
    fake_ollama.configure(hold=True)
    async with client.stream("llm.generate", {"prompt": "two"}) as s:
        await s.__anext__()
        await s.cancel()
        with pytest.raises(Cancelled):
            await s.__anext__()
    after = await client.call("llm.stats", {})
    assert after["completed"] == before["completed"] + 1
    assert after["cancelled"] == before["cancelled"] + 1
    assert (after["backend"], after["model"]) == ("ollama", "smollm2:135m")


async def test_loading_a_second_llm_backend_is_a_slot_conflict(client: Client) -> None:
    with pytest.raises(Conflict, match="module 'llm' and loaded module 'ollama' both fill slot 'llm'"):
        await client.call("module.load", {"name": "llm"})
    assert (await client.call("llm.stats", {}))["backend"] == "ollama"


async def test_ollama_model_list_shows_the_servers_models(client: Client, fake_ollama: FakeOllamaThread) -> None:
    fake_ollama.configure(models=["smollm2:135m", "qwen:0.5b"])
    models = (await client.call("model.list", {}))["models"]
    assert [(m["name"], m["loaded"]) for m in models] == [("smollm2:135m", True), ("qwen:0.5b", False)]


async def test_ollama_model_load_switches_and_refuses_unknown(client: Client, fake_ollama: FakeOllamaThread) -> None:
    fake_ollama.configure(models=["smollm2:135m", "qwen:0.5b"])
    with pytest.raises(NotFound, match=r"has no model 'nope' \(it has: qwen:0\.5b, smollm2:135m\)"):
        await client.call("model.load", {"name": "nope"})
    assert (await client.call("llm.stats", {}))["state"] == "ready"
    try:
        assert (await client.call("model.load", {"name": "qwen:0.5b"}))["loaded"] == "qwen:0.5b"
        await send_chat(client, {"text": "hi"})
        assert _last_chat_request(fake_ollama)["model"] == "qwen:0.5b"
    finally:
        await client.call("model.load", {"name": "smollm2:135m"})


async def test_backend_error_is_reported_and_no_empty_reply_is_stored(
    client: Client, fake_ollama: FakeOllamaThread
) -> None:
    fake_ollama.configure(models=[])
    session = await client.call("session.new", {})
    with pytest.raises(NotFound, match="model 'smollm2:135m' not found"):
        await send_chat(client, {"session_id": session["id"], "text": "anyone?"})
    history = (await client.call("session.history", {"id": session["id"]}))["messages"]
    assert [(m["role"], m["text"]) for m in history] == [("user", "anyone?")]


# -- without an LLM, and across a crash -----------------------------------------------------------------------
async def test_send_without_an_llm_loaded_is_unavailable(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url, autoload='"chat"'))
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        with pytest.raises(Unavailable, match="no LLM backend is loaded; load one with `enigma modules load llm`"):
            await send_chat(c, {"text": "hi"})
        assert (await c.call("session.list", {}))["sessions"] == []


async def test_backend_without_preload_loads_at_the_first_request(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url, preload=False))
    assert not [p for _, p, _ in fake_ollama.requests if p == "/api/tags"]  # nothing asked of Ollama yet
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        assert (await c.call("llm.stats", {}))["state"] == "standby"
        async with c.subscribe("llm.state") as states:
            await states.live()
            chunks, _ = await send_chat(c, {"text": "wake up"})
            seen = [(await asyncio.wait_for(states.__anext__(), 10)).body["state"] for _ in range(2)]
    assert "".join(chunks) == "The capital is Paris."
    assert seen == ["loading", "ready"]


async def test_failed_lazy_load_is_unavailable_and_retried(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url, preload=False))
    fake_ollama.configure(models=["something-else"])
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        with pytest.raises(Unavailable, match=r"the model could not be loaded: Ollama at .* has no model"):
            await send_chat(c, {"text": "hi"})
        fake_ollama.configure(models=["smollm2:135m"])
        chunks, _ = await send_chat(c, {"text": "hi again"})
    assert "".join(chunks) == "The capital is Paris."


async def test_bad_module_config_fails_the_module_with_the_key(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    config = _config(fake_ollama.url) + "\n[modules.ollama.sampling]\ntemperature = -1\n"
    d = module_daemon_factory(config)
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        modules = {m["name"]: m for m in (await c.call("module.list", {}))["modules"]}
        assert (await c.call("sys.ping", {}))["pong"] is True
    assert modules["ollama"]["state"] == "failed"
    # The key, the rule, the value, and the file that set it.
    assert re.fullmatch(
        r"modules\.ollama\.sampling\.temperature must be at least 0, got -1 in /\S+/enigmad-\d+\.toml",
        modules["ollama"]["error"],
    )


async def test_generations_beyond_max_pending_are_refused_busy(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url, extra="max_pending = 1"))
    fake_ollama.configure(hold=True)
    async with Client(d.rpc, d.events, timeout=20.0) as c, c.stream("llm.generate", {"prompt": "first"}) as held:
        assert await held.__anext__() == {"text": "The", "tokens": 1}
        with pytest.raises(Busy, match=r"1 generations are already running or queued \(limit 1\)"):
            async with c.stream("llm.generate", {"prompt": "second"}) as s:
                [x async for x in s]
        fake_ollama.release()
        assert "".join([x["text"] async for x in held]) == " capital is Paris."


async def test_sigkill_mid_reply_keeps_history_with_the_reply_incomplete(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url))
    fake_ollama.configure(hold=True)
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        session = await c.call("session.new", {"title": "crash"})
        async with c.stream("chat.send", {"session_id": session["id"], "text": "tell me a story"}) as s:
            assert await s.__anext__() == {"text": "The", "tokens": 1}  # stored before it was sent (flush_tokens = 1)
            d.stop(signal.SIGKILL)
    again = module_daemon_factory(_config(fake_ollama.url), data_dir=d.data_dir)
    async with Client(again.rpc, again.events, timeout=20.0) as c:
        history = (await c.call("session.history", {"id": session["id"]}))["messages"]
    assert [(m["role"], m["text"], m["complete"]) for m in history] == [
        ("user", "tell me a story", True),
        ("assistant", "The", False),
    ]


async def test_graceful_stop_mid_reply_stores_the_partial_reply(
    module_daemon_factory: StartDaemon, fake_ollama: FakeOllamaThread
) -> None:
    d = module_daemon_factory(_config(fake_ollama.url))
    fake_ollama.configure(hold=True)
    async with Client(d.rpc, d.events, timeout=20.0) as c:
        session = await c.call("session.new", {})
        async with c.stream("chat.send", {"session_id": session["id"], "text": "go"}) as s:
            assert await s.__anext__() == {"text": "The", "tokens": 1}
            assert await asyncio.to_thread(d.stop, signal.SIGTERM) == 0
            with pytest.raises(Cancelled):
                await s.__anext__()
    again = module_daemon_factory(_config(fake_ollama.url), data_dir=d.data_dir)
    async with Client(again.rpc, again.events, timeout=20.0) as c:
        history = (await c.call("session.history", {"id": session["id"]}))["messages"]
    assert [(m["role"], m["text"], m["complete"], m["finish_reason"]) for m in history] == [
        ("user", "go", True, None),
        ("assistant", "The", False, "cancelled"),
    ]
    assert "Traceback" not in d.log()
