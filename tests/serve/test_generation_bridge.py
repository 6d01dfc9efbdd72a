"""``Generation`` is the one bridge from a backend's thread to the daemon's loop: producers hand it items, the
loop builds text, token counts and usage from them, and the native engine's own timing reaches the reply."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from bus.errors import Busy
from daemon.modules.llm.base import Generation
from daemon.modules.llm.native import _listener
from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from tests.engine.speed_helpers import byte_tokenizer, tiny_model

TIMEOUT = 60.0


async def test_items_fed_from_another_thread_arrive_in_order_with_loop_timing() -> None:
    gen = Generation(model="m", loop=asyncio.get_running_loop(), prompt_tokens=3)

    def produce() -> None:
        for i in range(5):
            gen.feed(f"t{i} ", tokens=2)
        gen.finish("length")

    threading.Thread(target=produce).start()
    async with asyncio.timeout(TIMEOUT):
        text = await gen.drain()
    assert text == "t0 t1 t2 t3 t4 "
    assert gen.usage is not None
    body = gen.usage.to_dict()
    assert body["model"] == "m"
    assert (body["prompt_tokens"], body["completion_tokens"], body["finish_reason"]) == (3, 10, "length")
    assert body["ttft_ms"] is not None
    assert body["total_ms"] >= body["ttft_ms"]
    assert "prefill_ms" not in body  # only a runtime that times itself knows it


async def test_a_failure_from_another_thread_ends_the_stream_with_its_bus_error() -> None:
    from engine.scheduler import Busy as EngineBusy

    gen = Generation(model="m", loop=asyncio.get_running_loop())
    threading.Thread(target=gen.fail, args=(EngineBusy("the generation queue is full"),)).start()
    with pytest.raises(Busy, match="the generation queue is full"):
        async with asyncio.timeout(TIMEOUT):
            await gen.drain()
    assert gen.usage is not None
    assert gen.usage.finish_reason == "error"


async def test_the_native_engines_stream_and_timing_reach_the_loop_without_new_threads() -> None:
    tok = byte_tokenizer().with_stop_ids(set())
    sched = Scheduler(tiny_model(max_batch=2, max_seq=256), tok, max_batch=2).start()
    try:
        params = SamplingParams(temperature=0.0, max_tokens=12, repetition_penalty=1.1)
        loop = asyncio.get_running_loop()
        ref, _ = await loop.run_in_executor(None, sched.submit(tok.encode("héllo"), params).collect, TIMEOUT)
        threads = len(os.listdir("/proc/self/task"))
        handle = sched.submit(tok.encode("héllo"), params)
        gen = Generation(model="tiny", loop=loop, prompt_tokens=len(tok.encode("héllo")))
        gen.on_cancel = handle.cancel
        handle.listen(_listener(gen))
        async with asyncio.timeout(TIMEOUT):
            text = await gen.drain()
        # Consuming on the loop ran no torch op there: no second OpenMP team (see tests/engine/test_generate.py).
        assert len(os.listdir("/proc/self/task")) == threads
    finally:
        sched.stop()
    assert text == ref
    assert gen.usage is not None
    body = gen.usage.to_dict()
    assert (body["model"], body["completion_tokens"], body["finish_reason"]) == ("tiny", 12, "length")
    assert gen.tokens == 12  # counted from the deltas, on the loop
    assert handle.usage is not None
    assert body["ttft_ms"] == handle.usage.ttft_ms  # the engine's own timing, not the loop's
    assert 0 < body["prefill_ms"] <= body["ttft_ms"] <= body["total_ms"]
    assert body["decode_ms"] > 0
