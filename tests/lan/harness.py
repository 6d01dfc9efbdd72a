"""Daemons on a private LAN for the tests: each in its own network namespace, bound to its namespace address
with CURVE, and a relay (``tests.lan.nsclient``) per daemon through which the test calls it.

Every daemon's data dir is prepared before it starts: a server key pair and an allow-list that admits the
test's own client key as ``admin`` — the only key it trusts until pairing adds more. Where namespaces cannot
be created (``NetnsUnavailable``) the same daemons run on loopback with free ports instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.auth import AllowList, KeyPair, generate_keypair, save_keypair
from bus.errors import BusError
from tests.conftest import ROOT, DaemonProcess, clean_env
from tests.lan.netns import Node

START_TIMEOUT = 180.0  # a daemon that loads the model on a busy 2-core machine


class Relay:
    """Calls a daemon through a ``tests.lan.nsclient`` process running in the daemon's namespace."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._ids = iter(range(1, 1_000_000))
        self._queues: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, node: Node, rpc: str, events: str, server_key: str, key_file: Path) -> Relay:
        args = [sys.executable, "-m", "tests.lan.nsclient", "--rpc", rpc, "--events", events]
        args += [f"--server-key={server_key}", "--key-file", str(key_file)]  # a Z85 key may start with "-"
        proc = await asyncio.create_subprocess_exec(
            *node.exec_prefix(),
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        relay = cls(proc)
        assert proc.stdout is not None
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first == {"ready": True}
        relay._reader = asyncio.get_running_loop().create_task(relay._read())
        return relay

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            q = self._queues.get(msg.get("id"))
            if q is not None:
                q.put_nowait(msg)

    def _send(self, req: dict[str, Any]) -> asyncio.Queue[dict[str, Any]]:
        rid = next(self._ids)
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[rid] = q
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({**req, "id": rid}) + "\n").encode())
        return q

    async def call(self, method: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        q = self._send({"op": "call", "method": method, "body": body or {}, "timeout": timeout})
        msg = await asyncio.wait_for(q.get(), timeout + 5)
        if "error" in msg:
            raise BusError.from_body(msg["error"])
        return msg["reply"]

    def stream(self, method: str, body: dict[str, Any] | None = None, timeout: float = 60.0) -> RelayStream:
        return RelayStream(self, method, body or {}, timeout)

    async def subscribe(self, prefix: str) -> asyncio.Queue[dict[str, Any]]:
        """Start a subscription; returns the queue its ``{"event": {topic, body}}`` lines arrive on."""
        q = self._send({"op": "subscribe", "prefix": prefix})
        msg = await asyncio.wait_for(q.get(), 10)
        assert msg.get("subscribed"), msg
        return q

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class RelayStream:
    def __init__(self, relay: Relay, method: str, body: dict[str, Any], timeout: float) -> None:
        self.result: dict[str, Any] | None = None
        self._timeout = timeout
        self._q = relay._send({"op": "stream", "method": method, "body": body, "timeout": timeout})

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            msg = await asyncio.wait_for(self._q.get(), self._timeout + 5)
            if "chunk" in msg:
                yield msg["chunk"]
            elif "end" in msg:
                self.result = msg["end"]
                return
            else:
                raise BusError.from_body(msg["error"])


@dataclass
class LanDaemon:
    name: str
    node: Node
    proc: DaemonProcess
    keypair: KeyPair
    relay: Relay | None = None

    @property
    def rpc(self) -> str:
        return self.proc.rpc


def prepare_data_dir(data_dir: Path, client_public: str) -> KeyPair:
    """The daemon's key pair, and an allow-list admitting only the test client as admin."""
    kp = generate_keypair()
    save_keypair(data_dir / "server.key", kp)
    allow = AllowList(data_dir / "allow.json")
    allow.add(client_public, "admin", "test-client")
    allow.save()
    return kp


def start_daemon(
    base: Path, name: str, node: Node, client_public: str, *, config: str, ready_timeout: float = START_TIMEOUT
) -> LanDaemon:
    """Start enigmad ``name`` in ``node``'s namespace, bound to its address (ports 7700-7702 there, or free
    loopback ports when ``node`` is the loopback fallback)."""
    data_dir = base / name
    data_dir.mkdir(parents=True)
    kp = prepare_data_dir(data_dir, client_public)
    port = "0" if node.ns is None else "{p}"
    rpc, events = (f"tcp://{node.addr}:{port.format(p=p)}" for p in (7700, 7701))
    toml = f'[daemon]\nrpc = "{rpc}"\nevents = "{events}"\nnode_id = "{name}"\n[security]\ncurve = true\n' + config
    config_path = base / f"{name}.toml"
    config_path.write_text(toml)
    log_path = base / f"{name}.log"
    args = [sys.executable, "-X", "faulthandler", "-m", "daemon", "--data-dir", str(data_dir)]
    args += ["--config", str(config_path)]
    d = DaemonProcess.spawn([*node.exec_prefix(), *args], data_dir, log_path, clean_env(base), config_path)
    return LanDaemon(name, node, d, kp)


async def open_relay(d: LanDaemon, client_key_file: Path) -> Relay:
    d.relay = await Relay.start(d.node, d.proc.rpc, d.proc.events, d.keypair.public, client_key_file)
    return d.relay
