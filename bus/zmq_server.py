"""The daemon's ZeroMQ face: a ROUTER for requests and an XPUB for events, as an adapter around the hub.

Every frame that arrives is decoded, attributed to a caller (role from CURVE, or ``admin`` on loopback) and
handed to the job table, which runs it through the ``Dispatcher`` in its own task and answers it with exactly
one ``reply``/``error`` or with ``chunk``s closed by ``end``/``error``. The pieces, one idea each:

- ``bus.zmq_sockets``: the sockets, their options, binding and teardown;
- ``bus.zmq_jobs``: requests in flight per client, their answers, back-pressure and vanished clients;
- ``bus.zmq_events``: hub events through one bounded queue to the XPUB;
- ``bus.zap``: CURVE admission and the live allow-list.

This module is what ties them together: start and close in order, frame intake and the heartbeat timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from bus.auth import ServerAuth, is_loopback
from bus.envelope import DecodeError, Envelope, decode, event_map
from bus.errors import BadRequest, BusError, Unauthorized, Unavailable
from bus.service import Caller, Dispatcher
from bus.states import Lifecycle
from bus.topics import SYS_HEARTBEAT
from bus.wire import MAX_MSG_SIZE, IdMaker, LogLimiter, Packer, Pump, salvage_id_streaming
from bus.zmq_events import EventFanout
from bus.zmq_jobs import Header, Jobs, Peer
from bus.zmq_sockets import ServerSockets, check_exposure

log = logging.getLogger("enigma.bus.zmq")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_inflight_per_client: int = 64
    max_inflight: int = 4096  # across all clients
    sndhwm: int = 1000  # messages queued per client on the ROUTER before back-pressure
    rcvhwm: int = 1000
    events_sndhwm: int = 10_000  # per subscriber; the XPUB drops beyond it
    event_queue: int = 10_000  # hub events waiting for the sender task; oldest dropped beyond it
    stream_stall: float = 30.0  # seconds a stream may wait on a client that does not read
    max_msg_size: int = MAX_MSG_SIZE


class ZmqServer:
    """Serves a ``Dispatcher`` over ZeroMQ; ``start()``, then ``close()`` (which ends in-flight work first)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        rpc: str,
        events: str,
        node_id: str,
        boot_id: str,
        auth: ServerAuth | None = None,
        limits: ServerLimits | None = None,
        heartbeat: float = 2.0,
        require_curve: bool = False,
    ) -> None:
        self._dispatcher = dispatcher
        self._rpc, self._events = rpc, events
        self.node_id, self.boot_id = node_id, boot_id
        self._auth = auth
        self.limits = limits or ServerLimits()
        self._heartbeat = heartbeat
        self._require_curve = require_curve
        self._curve = False
        self._state = Lifecycle.NEW
        self._sockets: ServerSockets | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pumps: list[Pump] = []
        self._rpc_pump: Pump | None = None
        self._remove_listener: Any = None
        self._endpoints: dict[str, str] = {}
        self._ids = IdMaker()
        packer = Packer()
        self._jobs = Jobs(dispatcher, self.limits, self._ids, packer)
        self._fanout = EventFanout(self.limits.event_queue, self._ids, packer)
        self._probe_wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._warn_frames = LogLimiter(log)
        self._stats = {"connections": 0, "requests": 0, "undecodable": 0}

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def endpoints(self) -> dict[str, str]:
        """The bound endpoints, with the real port when asked to bind port 0."""
        return dict(self._endpoints)

    @property
    def curve(self) -> bool:
        return self._curve

    async def start(self) -> None:
        """Bind both sockets and start serving; raises ``Forbidden`` for an exposed bind without keys."""
        if self._state is not Lifecycle.NEW:
            raise RuntimeError(f"ZmqServer.start() called in state {self._state}")
        check_exposure(self._auth, {"rpc": self._rpc, "events": self._events})
        local = is_loopback(self._rpc) and is_loopback(self._events)
        self._curve = self._auth is not None and (self._require_curve or not local)
        sockets = ServerSockets(self.limits, self._heartbeat, self._auth, self._curve)
        self._endpoints = sockets.open(self._rpc, self._events)
        self._sockets = sockets
        self._state = Lifecycle.OPEN
        assert sockets.router is not None
        assert sockets.xpub is not None
        assert sockets.monitor is not None
        self._rpc_pump = Pump(sockets.router, self._on_frames, copy=not self._curve, name="rpc")
        self._jobs.router, self._jobs.pump = sockets.router, self._rpc_pump
        self._fanout.xpub = sockets.xpub
        self._fanout.pump = Pump(sockets.xpub, self._fanout.on_subscription, name="events")
        self._pumps += [self._rpc_pump, self._fanout.pump, Pump(sockets.monitor, self._on_monitor, name="monitor")]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._fanout.run(), name="zmq-event-send"),
            loop.create_task(self._heartbeat_loop(), name="zmq-heartbeat"),
        ]
        self._remove_listener = self._dispatcher.add_listener("", self._fanout.enqueue)
        log.info("serving rpc=%s events=%s curve=%s", self._endpoints["rpc"], self._endpoints["events"], self._curve)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (agreed interface)
        """Stop accepting, end in-flight work with ``cancelled``, flush events, close. Safe to call twice."""
        if self._state in (Lifecycle.CLOSING, Lifecycle.CLOSED):
            await self._closed.wait()
            return
        if self._state is Lifecycle.NEW:
            self._state = Lifecycle.CLOSED
            self._closed.set()
            return
        self._state = Lifecycle.CLOSING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._remove_listener is not None:
            self._remove_listener()
        if self._rpc_pump is not None:
            self._rpc_pump.close()  # stop accepting
        pending = self._jobs.cancel_all("the server is shutting down")
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        self._fanout.drain(len(self._fanout.queue))  # flush what the hub published before we stopped listening
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pump in self._pumps:
            pump.close()
        self._jobs.router = self._fanout.xpub = None
        if self._sockets is not None:
            # Give queued answers up to a second (within the deadline, but never less than a quarter) to leave.
            self._sockets.close(linger=int(max(0.25, min(1.0, deadline - loop.time())) * 1000))
            await asyncio.to_thread(self._sockets.term)
        self._state = Lifecycle.CLOSED
        self._closed.set()
        log.info("closed rpc=%s events=%s", self._endpoints.get("rpc"), self._endpoints.get("events"))

    def cancel_inflight(self, reason: str, *, keep: asyncio.Task[Any] | None = None) -> list[asyncio.Task[None]]:
        """End every request in flight but ``keep`` with ``cancelled`` (``reason`` is the message); returns their
        tasks so the caller can wait for them to finish. Used when the daemon's state is swapped under them."""
        return self._jobs.cancel_all(reason, keep=keep)

    def stats(self) -> dict[str, int]:
        s = dict(self._stats)
        jobs, fanout = self._jobs.stats, self._fanout.stats
        # errors also counts frames whose handling failed: answered by nobody, but never silently
        s["errors"] = jobs["errors"] + fanout["errors"] + sum(p.failures for p in self._pumps)
        s["busy"] = jobs["busy"]
        s["dropped"] = jobs["dropped"] + fanout["dropped"]
        s["vanished"] = jobs["vanished"]
        s["subscriptions"] = fanout["subscriptions"]
        s["clients"] = s["connections"]
        s["inflight"] = self._jobs.inflight
        s["queued_events"] = len(self._fanout.queue)
        zap = self._sockets.zap if self._sockets is not None else None
        s["refused_keys"] = zap.refused if zap is not None else 0
        return s

    # -- intake ---------------------------------------------------------------------------------------------
    def _on_frames(self, frames: list[Any]) -> None:
        key: str | None = None
        if self._curve:
            key = frames[-1].get("User-Id")
            frames = [f.bytes for f in frames]
        n = len(frames)
        rid = frames[0]
        if n == 2:
            header: Header = (rid,)
        elif n == 3 and not frames[1]:  # a REQ socket's empty delimiter: answer the same way
            header = (rid, b"")
        else:
            self._bad_shape(rid, frames)
            return
        payload = frames[-1]
        try:
            env = decode(payload)
        except DecodeError as exc:
            sid = exc.salvaged_id
            if sid is None and exc.too_large:
                sid = salvage_id_streaming(payload)
            if sid is None:
                self._stats["undecodable"] += 1
                self._warn_frames.warn("undecodable frame from %s: %s", rid.hex(), exc.message)
                return
            self._jobs.send_error(header, sid, exc.as_wire_error())
            return
        kind = env.kind
        if kind == "request":
            self._on_request(header, env, key)
        elif kind == "cancel":
            self._jobs.cancel(rid, env.ref or "")
        else:
            self._jobs.send_error(header, env.id, BadRequest(f"kind {kind!r} is not accepted on the request socket"))

    def _bad_shape(self, rid: bytes, frames: list[bytes]) -> None:
        sid = None
        if len(frames) >= 2:
            with contextlib.suppress(DecodeError):
                sid = decode(frames[-1]).id
        msg = f"expected one envelope frame after the routing id, got {len(frames) - 1} frames"
        if sid is None:
            self._stats["undecodable"] += 1
            self._warn_frames.warn("message from %s: %s", rid.hex(), msg)
            return
        self._jobs.send_error((rid,), sid, BadRequest(msg))

    def _caller(self, rid: bytes, key: str | None) -> Caller | BusError:
        if not self._curve:
            return Caller("zmq", rid.hex(), "admin")
        assert self._auth is not None
        role = self._auth.allow.role_of(key) if key else None
        if role is None:
            return Unauthorized("this key is no longer on the server's allow-list")
        return Caller("zmq", rid.hex(), role, key)

    def _on_request(self, header: Header, env: Envelope, key: str | None) -> None:
        self._stats["requests"] += 1
        rid = header[0]
        if self._state is not Lifecycle.OPEN:
            self._jobs.send_error(header, env.id, Unavailable("the server is shutting down"))
            return
        cl = self._jobs.client(rid)
        if cl is None or self._curve:  # with CURVE, the role is looked up per request: revocation is immediate
            caller = self._caller(rid, key)
            if isinstance(caller, BusError):
                self._jobs.send_error(header, env.id, caller)
                return
            if cl is None:
                cl = Peer(rid, caller)
            else:
                cl.caller = caller
        self._jobs.admit(header, env, cl)

    # -- liveness -------------------------------------------------------------------------------------------
    def _heartbeat_body(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "boot_id": self.boot_id, "ts": time.time()}

    def _probe_clients(self) -> None:
        if not self._jobs.clients:
            return
        body = self._heartbeat_body()
        self._jobs.probe(event_map(self._ids(), SYS_HEARTBEAT, body, body["ts"]))

    def _on_monitor(self, frames: list[bytes]) -> None:
        ev = parse_monitor_message(frames)
        if ev["event"] == zmq.EVENT_ACCEPTED:
            self._stats["connections"] += 1
        elif ev["event"] == zmq.EVENT_DISCONNECTED:
            self._stats["connections"] = max(0, self._stats["connections"] - 1)
            self._probe_wake.set()

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time()
        while True:
            now = loop.time()
            if now >= next_beat:
                next_beat = now + self._heartbeat
                self._fanout.enqueue(SYS_HEARTBEAT, self._heartbeat_body())
                self._reload_allow_list()
            self._probe_clients()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that races the event being set,
            # and close() then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_beat - loop.time())):
                    await self._probe_wake.wait()
            if self._probe_wake.is_set():
                self._probe_wake.clear()
                # The pipe of a disconnected peer is torn down by libzmq shortly after the monitor event;
                # one probe now and one a moment later catch it without waiting for the next heartbeat.
                self._probe_clients()
                await asyncio.sleep(0.05)

    def _reload_allow_list(self) -> None:
        """Re-read the allow-list if its file changed (the heartbeat does this every interval)."""
        if self._sockets is not None and self._sockets.zap is not None:
            self._sockets.zap.reload()
