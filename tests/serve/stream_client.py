"""A client process for tests that kill a client mid-stream: ``python -m tests.serve.stream_client RPC EVENTS
METHOD JSON`` prints ``chunk`` after every chunk it receives (flushed), then ``end``."""

from __future__ import annotations

import asyncio
import json
import sys

from clients.sdk import Client


async def main(rpc: str, events: str, method: str, body: str) -> None:
    async with Client(rpc, events, timeout=60.0) as c, c.stream(method, json.loads(body)) as s:
        async for _ in s:
            print("chunk", flush=True)
    print("end", flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
