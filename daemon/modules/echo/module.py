"""``echo``: answers with what it is sent, and streams a count — the probe for the bus and its streaming path.

Tests and benchmarks use it to measure round trips and stream throughput without a model in the way:
``echo.say`` is the smallest possible unary call, ``echo.count`` streams ``n`` chunks (optionally padded and
spaced out) and stops at the next chunk when the caller cancels.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bus.service import Call
from daemon.module import Module, method
from daemon.settings import NO_SETTINGS

SAY_SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 1_000_000}},
}
COUNT_SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
        "delay": {"type": "number", "minimum": 0, "maximum": 60},
        "pad": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
    },
}


class EchoModule(Module):
    name = "echo"
    description = "Echoes requests and streams counts: a probe for the bus, its latency and its streaming."
    config_schema = NO_SETTINGS

    async def load(self) -> None:
        self.ctx.serve(self)

    @method("echo.say", access="device", schema=SAY_SCHEMA)
    async def say(self, call: Call) -> dict[str, Any]:
        """Return the request body unchanged (``{"text": …}`` by convention), plus who called."""
        return {**call.body, "caller": call.caller.role}

    @method("echo.count", stream=True, access="device", schema=COUNT_SCHEMA)
    async def count(self, call: Call) -> dict[str, Any]:
        """Stream ``{"i": 0..n-1}`` (``n`` default 10), ``delay`` seconds apart, each padded with ``pad`` bytes;
        ends with ``{"count": n}``. Cancelling stops it before the next chunk."""
        n = call.body.get("n", 10)
        delay = float(call.body.get("delay", 0.0))
        pad = b"x" * call.body.get("pad", 0)
        for i in range(n):
            chunk: dict[str, Any] = {"i": i}
            if pad:
                chunk["pad"] = pad
            await call.emit(chunk)
            if delay:
                await asyncio.sleep(delay)
            elif i % 64 == 63:
                await asyncio.sleep(0)  # emit may not yield when the queue has room: let others (and cancel) in
        return {"count": n}
