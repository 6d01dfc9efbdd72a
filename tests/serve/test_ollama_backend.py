"""The Ollama backend against a local server speaking Ollama's documented streaming format."""

from __future__ import annotations

import asyncio
import re

import pytest

from bus.errors import BadRequest, BusError, InternalError, NotFound, Unavailable
from daemon.modules.llm.ollama import OllamaBackend, list_models, ollama_options
from tests.serve.fake_ollama import FakeOllama


async def _backend(server: FakeOllama, model: str = "smollm2:135m") -> OllamaBackend:
    backend = OllamaBackend(model, {"url": server.url, "context_length": 1024, "timeout": 5.0})
    await backend.load()
    return backend


async def test_chat_streams_deltas_and_reports_ollama_counts() -> None:
    async with FakeOllama() as server:
        backend = await _backend(server)
        prompt = backend.prepare_chat([{"role": "user", "content": "capital of France?"}])
        gen = backend.chat(prompt, {"temperature": 0, "max_tokens": 20})
        deltas = [d async for d in gen]
        assert deltas == ["The", " capital", " is", " Paris", "."]
        assert gen.usage is not None
        assert (gen.usage.prompt_tokens, gen.usage.completion_tokens, gen.usage.finish_reason) == (12, 5, "stop")


async def test_chat_sends_messages_and_maps_sampling_options() -> None:
    async with FakeOllama() as server:
        backend = await _backend(server)
        sampling = {
            "temperature": 0.5,
            "top_k": 3,
            "repetition_penalty": 1.1,
            "max_tokens": 7,
            "stop": ["\n"],
            "seed": 4,
        }
        prompt = backend.prepare_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
        await backend.chat(prompt, sampling).drain()
        method, path, body = server.requests[-1]
        assert (method, path) == ("POST", "/api/chat")
        assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
        assert body["stream"] is True
        assert body["options"] == {
            "temperature": 0.5,
            "top_k": 3,
            "repeat_penalty": 1.1,
            "num_predict": 7,
            "stop": ["\n"],
            "seed": 4,
            "num_ctx": 1024,
        }


async def test_generate_uses_raw_prompt_endpoint() -> None:
    async with FakeOllama() as server:
        backend = await _backend(server)
        text = await backend.generate("Once upon", {"max_tokens": 2}).drain()
        assert text == "The capital"
        _, path, body = server.requests[-1]
        assert path == "/api/generate"
        assert (body["prompt"], body["raw"]) == ("Once upon", True)


async def test_length_finish_reason_is_passed_through() -> None:
    async with FakeOllama(done_reason="length") as server:
        backend = await _backend(server)
        gen = backend.chat(backend.prepare_chat([{"role": "user", "content": "x"}]), {"max_tokens": 2})
        await gen.drain()
        assert gen.usage is not None
        assert gen.usage.finish_reason == "length"


async def test_cancel_drops_the_connection_and_ends_cancelled() -> None:
    async with FakeOllama(hold=True) as server:
        backend = await _backend(server)
        gen = backend.chat(backend.prepare_chat([{"role": "user", "content": "x"}]), {})
        assert await gen.__anext__() == "The"
        gen.cancel()
        rest = [d async for d in gen]
        assert rest == []
        assert gen.usage is not None
        assert gen.usage.finish_reason == "cancelled"
        await asyncio.wait_for(server.disconnected.wait(), 5.0)


async def test_list_models_reads_tags() -> None:
    async with FakeOllama(models=["a:1", "b:2"]) as server:
        models = await list_models(server.url)
        assert [m["name"] for m in models] == ["a:1", "b:2"]


async def test_load_of_a_model_the_server_lacks_is_not_found() -> None:
    async with FakeOllama(models=["other:1"]) as server:
        backend = OllamaBackend("smollm2:135m", {"url": server.url})
        with pytest.raises(NotFound, match=r"has no model 'smollm2:135m' \(it has: other:1\)"):
            await backend.load()


async def test_unreachable_server_is_unavailable() -> None:
    async with FakeOllama() as server:
        url = server.url
    backend = OllamaBackend("smollm2:135m", {"url": url, "timeout": 2.0})
    with pytest.raises(Unavailable, match="is not reachable"):
        await backend.load()


async def test_model_removed_after_load_surfaces_the_server_error() -> None:
    async with FakeOllama() as server:
        backend = await _backend(server)
        server.models.clear()
        gen = backend.chat(backend.prepare_chat([{"role": "user", "content": "x"}]), {})
        with pytest.raises(NotFound, match="model 'smollm2:135m' not found"):
            await gen.drain()


def test_default_num_predict_and_context_are_always_sent() -> None:
    assert ollama_options({}, 2048) == {"num_predict": 512, "num_ctx": 2048}


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _answer(status: int, body: bytes) -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def _chat_error(server: FakeOllama, limit: float = 5.0) -> BusError:
    backend = OllamaBackend("smollm2:135m", {"url": server.url, "timeout": limit})
    await backend.load()
    gen = backend.chat(backend.prepare_chat([{"role": "user", "content": "x"}]), {})
    with pytest.raises(BusError) as exc:
        await gen.drain()
    return exc.value


@pytest.mark.parametrize(
    ("raw", "kind", "message"),
    [
        (
            CHUNKED_HEAD + _chunk(b'{"message": {"content": "The"}, "done": false}\n'),
            Unavailable,
            r"POST http://127\.0\.0\.1:\d+/api/chat: connection broke mid-response",
        ),
        (
            CHUNKED_HEAD + _chunk(b"not json\n") + b"0\r\n\r\n",
            InternalError,
            r"/api/chat: response line is not JSON: b'not json'",
        ),
        (
            CHUNKED_HEAD + _chunk(b'{"error": "out of memory"}\n') + b"0\r\n\r\n",
            InternalError,
            r"/api/chat: server error: out of memory",
        ),
        (
            _answer(503, b'{"error": "overloaded"}'),
            Unavailable,
            r"/api/chat: HTTP 503: overloaded",
        ),
        (
            _answer(500, b'{"error": "boom"}'),
            InternalError,
            r"/api/chat: HTTP 500: boom",
        ),
        (_answer(200, b""), Unavailable, r"ended the stream without done=true"),
    ],
    ids=["broken", "not-json", "error-line", "503", "500", "empty"],
)
async def test_a_bad_answer_fails_the_generation_with_its_code(raw: bytes, kind: type, message: str) -> None:
    async with FakeOllama(raw=raw) as server:
        error = await _chat_error(server)
    assert type(error) is kind
    assert re.search(message, error.message), error.message


async def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    async with FakeOllama(silent=True) as server:
        error = await _chat_error(server, limit=0.5)
        assert isinstance(error, Unavailable)
        assert "/api/chat: no valid answer" in error.message
        await asyncio.wait_for(server.disconnected.wait(), 5.0)


def test_a_url_that_is_not_http_is_refused_when_configured() -> None:
    with pytest.raises(BadRequest, match=r"unsupported URL 'ftp://x': expected http://host:port"):
        OllamaBackend("m", {"url": "ftp://x"})
