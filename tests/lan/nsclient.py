"""A relay for tests: the SDK client run inside a network namespace, driven over stdin/stdout as JSON lines.

The test process lives in the root namespace and cannot reach a daemon bound to a namespace's address, so it
starts this with ``ip netns exec NS`` and sends it one JSON object per line:
``{"id", "op": "call"|"stream"|"subscribe", "method", "body", "timeout", "prefix"}``. Answers come back as
lines ``{"id", "chunk"}``, ``{"id", "end"}``, ``{"id", "reply"}``, ``{"id", "error": {code, message}}`` and,
for a subscription, ``{"id", "event": {topic, body}}`` — each written the moment it happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from bus.auth import ClientCurve, load_keypair
from bus.errors import BusError
from clients.sdk import Client


def _out(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


async def _run(c: Client, req: dict[str, Any]) -> None:
    rid, op = req["id"], req["op"]
    try:
        if op == "call":
            _out({"id": rid, "reply": await c.call(req["method"], req.get("body", {}), timeout=req.get("timeout"))})
        elif op == "stream":
            async with c.stream(req["method"], req.get("body", {}), timeout=req.get("timeout")) as s:
                async for chunk in s:
                    _out({"id": rid, "chunk": chunk})
            _out({"id": rid, "end": s.result})
        elif op == "subscribe":
            async with c.subscribe(req["prefix"]) as sub:
                _out({"id": rid, "subscribed": True})
                async for ev in sub:
                    _out({"id": rid, "event": {"topic": ev.topic, "body": ev.body}})
    except BusError as exc:
        _out({"id": rid, "error": exc.to_body()})


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rpc", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--server-key", required=True, help="the daemon's public key")
    p.add_argument("--key-file", required=True, help="our key pair (JSON)")
    args = p.parse_args()
    curve = ClientCurve(args.server_key, load_keypair(args.key_file))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()
    async with Client(args.rpc, args.events, curve=curve, timeout=30.0) as c:
        _out({"ready": True})
        while line := await reader.readline():
            t = loop.create_task(_run(c, json.loads(line)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)


if __name__ == "__main__":
    asyncio.run(main())
