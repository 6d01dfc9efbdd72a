"""A real ``ZmqServer`` around a real ``Hub`` with test handlers, on loopback port 0, per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import zmq
import zmq.asyncio

from bus.errors import NotFound
from bus.service import Call
from bus.zmq_server import ServerLimits, ZmqServer
from daemon.hub import Hub

HEARTBEAT = 0.2  # fast heartbeats so vanished clients and restarts are noticed quickly


@dataclass
class Probes:
    """Events the handlers set so tests can wait on what happened inside the server."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def build_hub(probes: Probes) -> Hub:
    hub = Hub()

    async def echo(call: Call) -> dict[str, Any]:
        return {"echo": call.body, "role": call.caller.role}

    async def count(call: Call) -> dict[str, Any]:
        n = call.body.get("n", 3)
        pad = call.body.get("pad", 0)
        for i in range(n):
            await call.emit({"i": i, "pad": b"x" * pad} if pad else {"i": i})
        return {"total": n}

    async def slow(call: Call) -> dict[str, Any]:
        probes.started.set()
        try:
            await probes.release.wait()
        except asyncio.CancelledError:
            probes.cancelled.set()
            raise
        return {"released": True}

    async def hang(call: Call) -> dict[str, Any]:
        """Emits one chunk, then waits until released or cancelled."""
        await call.emit({"i": 0})
        return await slow(call)

    async def fail(call: Call) -> dict[str, Any]:
        raise ValueError("boom")

    async def missing(call: Call) -> dict[str, Any]:
        raise NotFound("no such thing: x")

    async def admin_only(call: Call) -> dict[str, Any]:
        return {"ok": True}

    async def bad_chunk(call: Call) -> dict[str, Any]:
        await call.emit({"not msgpack": object()})
        return {}

    async def ping(call: Call) -> dict[str, Any]:
        return {"pong": True}

    hub.register("sys.ping", ping, access="device")
    hub.register(
        "t.echo",
        echo,
        schema={"type": "object", "properties": {"x": {"type": "integer"}}},
    )
    hub.register("t.count", count, stream=True)
    hub.register("t.hang", hang, stream=True)
    hub.register("t.slow", slow)
    hub.register("t.fail", fail)
    hub.register("t.missing", missing)
    hub.register("t.admin", admin_only, access="admin")
    hub.register("t.bad_chunk", bad_chunk, stream=True)
    return hub


@dataclass
class Rig:
    hub: Hub
    server: ZmqServer
    probes: Probes

    @property
    def rpc(self) -> str:
        return self.server.endpoints["rpc"]

    @property
    def events(self) -> str:
        return self.server.endpoints["events"]


def make_server(hub: Hub, boot_id: str = "boot-1", **kwargs: Any) -> ZmqServer:
    opts: dict[str, Any] = {"rpc": "tcp://127.0.0.1:0", "events": "tcp://127.0.0.1:0", "heartbeat": HEARTBEAT}
    opts.update(kwargs)
    return ZmqServer(hub, node_id="test-node", boot_id=boot_id, **opts)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    probes = Probes()
    hub = build_hub(probes)
    server = make_server(hub, limits=ServerLimits(max_inflight_per_client=8))
    await server.start()
    try:
        yield Rig(hub, server, probes)
    finally:
        await server.close(timeout=2.0)


class Raw:
    """A bare DEALER: frames go out exactly as given, answers are plain msgpack maps."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, kind: int = zmq.DEALER) -> None:
        self.sock = ctx.socket(kind)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    async def send(self, *frames: bytes) -> None:
        await self.sock.send_multipart(list(frames))

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        """The next answer, skipping heartbeat probes the server sends to clients with work in flight."""
        while True:
            frames = await asyncio.wait_for(self.sock.recv_multipart(), within)
            m = msgpack.unpackb(frames[-1], raw=False)
            if m.get("kind") != "event":
                return m

    async def request(self, method: str, body: dict[str, Any] | None = None, id_: str = "r1") -> dict[str, Any]:
        await self.send(pack({"v": 1, "kind": "request", "id": id_, "method": method, "body": body or {}}))
        return await self.recv()


def pack(m: Any) -> bytes:
    return msgpack.packb(m, use_bin_type=True)


@pytest.fixture
async def ctx() -> AsyncIterator[zmq.asyncio.Context]:
    c = zmq.asyncio.Context()
    yield c
    c.destroy(linger=0)
