"""The llama.cpp backend on the default GGUF, in process (skipped where llama-cpp-python is not installed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bus.errors import TooLarge

pytest.importorskip("llama_cpp")

from daemon.modules.llm.llamacpp import LlamaCppBackend

# One model load for the whole module: the fixture and the tests share one event loop.
pytestmark = [pytest.mark.model, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend("", {"context_length": 512}, tmp_path_factory.mktemp("llamacpp"))
    await b.load()
    try:
        yield b
    finally:
        await b.unload()


async def test_chat_answers_a_capital_question(backend: LlamaCppBackend) -> None:
    # llama.cpp's 4-bit kernels quantise activations too, and on "What is the capital of France?" its greedy
    # answer drifts into French nouns; this wording is answered plainly by both engines.
    messages = [{"role": "user", "content": "Name the capital of France."}]
    gen = backend.chat(backend.prepare_chat(messages), {"temperature": 0, "max_tokens": 24})
    text = await gen.drain()
    assert "Paris" in text
    assert gen.usage is not None
    assert gen.usage.finish_reason == "stop"
    assert gen.usage.completion_tokens > 0


async def test_chat_template_comes_from_the_gguf(backend: LlamaCppBackend) -> None:
    prompt = backend.render_chat([{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert backend.count_chat_tokens([{"role": "user", "content": "hi"}]) == backend.count_tokens(prompt)


async def test_max_tokens_ends_with_length(backend: LlamaCppBackend) -> None:
    gen = backend.generate("1, 2, 3, 4, 5,", {"temperature": 0, "max_tokens": 5})
    await gen.drain()
    assert gen.usage is not None
    assert (gen.usage.completion_tokens, gen.usage.finish_reason) == (5, "length")


async def test_cancel_stops_the_generation(backend: LlamaCppBackend) -> None:
    gen = backend.generate("1, 2, 3, 4, 5,", {"temperature": 0, "max_tokens": 400})
    await gen.__anext__()
    gen.cancel()
    await gen.drain()
    assert gen.usage is not None
    assert gen.usage.finish_reason == "cancelled"
    assert gen.usage.completion_tokens < 400


async def test_prompt_over_the_context_is_too_large(backend: LlamaCppBackend) -> None:
    with pytest.raises(TooLarge, match="exceeds the context length 512"):
        await backend.generate("word " * 600, {"max_tokens": 4}).drain()
