"""The daemon's ZeroMQ face: a ROUTER for requests and an XPUB for events, as an adapter around the hub.

Every frame that arrives is decoded, attributed to a caller (role from CURVE, or ``admin`` on loopback) and
handed to the ``Dispatcher`` in its own task; the task answers with exactly one ``reply``/``error`` or with
``chunk``s closed by ``end``/``error``. What bounds memory, and what happens at each bound:

- per client, ``max_inflight_per_client`` requests run at once; the next one is answered ``busy``;
- per client, ZeroMQ's pipe (``SNDHWM`` messages) is the stream queue: when it is full the ROUTER reports
  EAGAIN (``ROUTER_MANDATORY``) and ``Call.emit`` waits, which is the handler's back-pressure; a client that
  reads nothing for ``stream_stall`` seconds has its stream ended with ``timeout``;
- a client that vanished is found by ``EHOSTUNREACH`` when its next message is sent, and by a probe sent to
  every client with work in flight after each disconnect and every heartbeat: its tasks are cancelled;
- hub events go through one bounded deque (oldest dropped and counted) to one sender task; the XPUB drops
  for a subscriber whose ``SNDHWM`` is full, so a slow subscriber never grows the daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import zmq
from zmq.utils.monitor import parse_monitor_message

from bus.auth import ServerAuth, is_loopback
from bus.envelope import VERSION, DecodeError, Envelope, decode
from bus.errors import (
    BadRequest,
    BusError,
    Busy,
    Cancelled,
    Conflict,
    Forbidden,
    InternalError,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from bus.service import Call, Caller, Dispatcher
from bus.wire import MAX_MSG_SIZE, IdMaker, LogLimiter, Packer, Pump, salvage_id_streaming, set_heartbeat
from bus.zap import ZAP_DOMAIN, ZapHandler

log = logging.getLogger("enigma.bus.zmq")

HEARTBEAT_TOPIC: Final = "sys.heartbeat"


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


class _Job:
    __slots__ = ("header", "reason", "task")

    def __init__(self, header: tuple[bytes, ...]) -> None:
        self.header = header
        self.task: asyncio.Task[None] | None = None
        self.reason: str | None = None  # why we cancelled it; None = the client vanished, answer nobody


class _Client:
    __slots__ = ("caller", "gone", "jobs", "rid")

    def __init__(self, rid: bytes, caller: Caller) -> None:
        self.rid = rid
        self.caller = caller
        self.jobs: dict[str, _Job] = {}
        self.gone = False


_OK, _AGAIN, _GONE = 0, 1, 2


class ZmqServer:
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
        self._state = "new"
        self._ctx: zmq.Context[Any] | None = None
        self._router: zmq.Socket | None = None
        self._xpub: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._zap: ZapHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pumps: list[Pump] = []
        self._rpc_pump: Pump | None = None
        self._events_pump: Pump | None = None
        self._remove_listener: Any = None
        self._clients: dict[bytes, _Client] = {}
        self._endpoints: dict[str, str] = {}
        self._ids = IdMaker()
        self._packer = Packer()
        self._evq: deque[tuple[str, dict[str, Any]]] = deque(maxlen=self.limits.event_queue)
        self._ev_wake = asyncio.Event()
        self._probe_wake = asyncio.Event()
        self._closed = asyncio.Event()
        self._warn_frames = LogLimiter(log)
        self._inflight = 0
        self._stats = {
            "connections": 0,
            "requests": 0,
            "errors": 0,
            "busy": 0,
            "undecodable": 0,
            "dropped": 0,
            "vanished": 0,
            "subscriptions": 0,
        }

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def endpoints(self) -> dict[str, str]:
        """The bound endpoints, with the real port when asked to bind port 0."""
        return dict(self._endpoints)

    @property
    def curve(self) -> bool:
        return self._curve

    def _check_exposure(self) -> None:
        for what, ep in (("rpc", self._rpc), ("events", self._events)):
            if self._auth is None and not is_loopback(ep):
                raise Forbidden(
                    f"refusing to bind {what} endpoint {ep} without CURVE: a non-loopback address needs the "
                    "server key pair and an allow-list (create them with `enigmad keys show` and "
                    "`enigmad keys allow KEY --role R`), or bind a loopback address such as tcp://127.0.0.1:7700",
                    {"endpoint": ep},
                )

    async def start(self) -> None:
        """Bind both sockets and start serving; raises ``Forbidden`` for an exposed bind without keys."""
        if self._state != "new":
            raise RuntimeError(f"ZmqServer.start() called in state {self._state}")
        self._check_exposure()
        local = is_loopback(self._rpc) and is_loopback(self._events)
        self._curve = self._auth is not None and (self._require_curve or not local)
        self._ctx = zmq.Context()
        try:
            if self._curve:
                assert self._auth is not None
                self._auth.allow.load()
                self._zap = ZapHandler(self._ctx, self._auth.allow)
            self._router = self._socket(zmq.ROUTER)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.sndhwm = self.limits.sndhwm
            self._router.rcvhwm = self.limits.rcvhwm
            self._xpub = self._socket(zmq.XPUB)
            self._xpub.sndhwm = self.limits.events_sndhwm
            self._monitor = self._router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            self._endpoints["rpc"] = self._bind(self._router, self._rpc)
            self._endpoints["events"] = self._bind(self._xpub, self._events)
        except BaseException:
            self._teardown_sockets()
            raise
        self._state = "running"
        loop = asyncio.get_running_loop()
        assert self._router is not None
        assert self._xpub is not None
        assert self._monitor is not None
        if self._zap is not None:  # first: no handshake may wait on an admission nobody answers
            self._zap.start()
        self._rpc_pump = Pump(self._router, self._on_frames, copy=not self._curve, name="rpc")
        self._events_pump = Pump(self._xpub, self._on_subscription, name="events")
        self._pumps += [
            self._rpc_pump,
            self._events_pump,
            Pump(self._monitor, self._on_monitor, name="monitor"),
        ]
        self._tasks = [
            loop.create_task(self._event_loop(), name="zmq-event-send"),
            loop.create_task(self._heartbeat_loop(), name="zmq-heartbeat"),
        ]
        self._remove_listener = self._dispatcher.add_listener("", self._on_event)
        log.info("serving rpc=%s events=%s curve=%s", self._endpoints["rpc"], self._endpoints["events"], self._curve)

    def _socket(self, kind: int) -> zmq.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_msg_size)
        set_heartbeat(sock, self._heartbeat)
        if self._curve:
            assert self._auth is not None
            sock.curve_server = True
            sock.curve_publickey = self._auth.keypair.public.encode("ascii")
            sock.curve_secretkey = self._auth.keypair.secret.encode("ascii")
            sock.zap_domain = ZAP_DOMAIN
        return sock

    @staticmethod
    def _bind(sock: zmq.Socket, endpoint: str) -> str:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise Unavailable(f"cannot bind {endpoint}: {exc.strerror}", {"endpoint": endpoint}) from exc
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (agreed interface)
        """Stop accepting, end in-flight work with ``cancelled``, flush events, close. Safe to call twice."""
        if self._state in ("closing", "closed"):
            await self._closed.wait()
            return
        if self._state == "new":
            self._state = "closed"
            self._closed.set()
            return
        self._state = "closing"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._remove_listener is not None:
            self._remove_listener()
        if self._rpc_pump is not None:
            self._rpc_pump.close()  # stop accepting
        pending = []
        for cl in list(self._clients.values()):
            for job in cl.jobs.values():
                if job.task is not None and not job.task.done():
                    job.reason = "the server is shutting down"
                    job.task.cancel()
                    pending.append(job.task)
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
        self._drain_events(len(self._evq))  # flush what the hub published before we stopped listening
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pump in self._pumps:
            pump.close()
        # Give queued answers up to a second (within the deadline, but never less than a quarter) to leave.
        linger = int(max(0.25, min(1.0, deadline - loop.time())) * 1000)
        self._teardown_sockets(linger)
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await asyncio.to_thread(ctx.term)
        self._state = "closed"
        self._closed.set()
        log.info("closed rpc=%s events=%s", self._endpoints.get("rpc"), self._endpoints.get("events"))

    def _teardown_sockets(self, linger: int = 0) -> None:
        if self._router is not None and self._monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._router.disable_monitor()
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        for name in ("_monitor", "_router", "_xpub"):
            sock = getattr(self, name)
            if sock is not None:
                sock.close(linger=linger if name in ("_router", "_xpub") else 0)
                setattr(self, name, None)
        if self._state == "new" and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def cancel_inflight(self, reason: str, *, keep: asyncio.Task[Any] | None = None) -> list[asyncio.Task[None]]:
        """End every request in flight but ``keep`` with ``cancelled`` (``reason`` is the message); returns their
        tasks so the caller can wait for them to finish. Used when the daemon's state is swapped under them."""
        tasks = []
        for cl in list(self._clients.values()):
            for job in cl.jobs.values():
                if job.task is not None and job.task is not keep and not job.task.done() and job.reason is None:
                    job.reason = reason
                    job.task.cancel()
                    tasks.append(job.task)
        return tasks

    def stats(self) -> dict[str, int]:
        s = dict(self._stats)
        s["errors"] += sum(p.failures for p in self._pumps)  # frames whose handling failed: answered by nobody
        s["clients"] = s["connections"]
        s["inflight"] = self._inflight
        s["queued_events"] = len(self._evq)
        s["refused_keys"] = self._zap.refused if self._zap is not None else 0
        return s

    # -- requests -------------------------------------------------------------------------------------------
    def _on_frames(self, frames: list[Any]) -> None:
        key: str | None = None
        if self._curve:
            key = frames[-1].get("User-Id")
            frames = [f.bytes for f in frames]
        n = len(frames)
        rid = frames[0]
        if n == 2:
            header: tuple[bytes, ...] = (rid,)
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
            self._send_error(header, sid, exc.as_wire_error())
            return
        kind = env.kind
        if kind == "request":
            self._on_request(header, env, key)
        elif kind == "cancel":
            self._on_cancel(rid, env)
        else:
            self._send_error(header, env.id, BadRequest(f"kind {kind!r} is not accepted on the request socket"))

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
        self._send_error((rid,), sid, BadRequest(msg))

    def _caller(self, rid: bytes, key: str | None) -> Caller | BusError:
        if not self._curve:
            return Caller("zmq", rid.hex(), "admin")
        assert self._auth is not None
        role = self._auth.allow.role_of(key) if key else None
        if role is None:
            return Unauthorized("this key is no longer on the server's allow-list")
        return Caller("zmq", rid.hex(), role, key)

    def _on_request(self, header: tuple[bytes, ...], env: Envelope, key: str | None) -> None:
        self._stats["requests"] += 1
        rid = header[0]
        if self._state != "running":
            self._send_error(header, env.id, Unavailable("the server is shutting down"))
            return
        cl = self._clients.get(rid)
        if cl is None or self._curve:
            caller = self._caller(rid, key)
            if isinstance(caller, BusError):
                self._send_error(header, env.id, caller)
                return
            if cl is None:
                cl = _Client(rid, caller)
            else:
                cl.caller = caller
        if len(cl.jobs) >= self.limits.max_inflight_per_client or self._inflight >= self.limits.max_inflight:
            self._stats["busy"] += 1
            limit = self.limits.max_inflight_per_client
            self._send_error(header, env.id, Busy(f"too many requests in flight (limit {limit} per client)"))
            return
        if env.id in cl.jobs:
            self._send_error(header, env.id, Conflict(f"request id {env.id!r} is already in flight"))
            return
        self._clients[rid] = cl
        job = _Job(header)
        cl.jobs[env.id] = job
        self._inflight += 1
        job.task = asyncio.get_running_loop().create_task(self._run(cl, job, env))

    def _on_cancel(self, rid: bytes, env: Envelope) -> None:
        cl = self._clients.get(rid)
        job = cl.jobs.get(env.ref or "") if cl is not None else None
        if job is not None and job.task is not None and job.reason is None:
            job.reason = "cancelled by the client"
            job.task.cancel()

    async def _run(self, cl: _Client, job: _Job, env: Envelope) -> None:
        ref = env.id
        header = job.header
        seq = 0

        async def emit(body: dict[str, Any]) -> None:
            nonlocal seq
            m = {"v": VERSION, "kind": "chunk", "id": self._ids(), "body": body, "ref": ref, "seq": seq}
            try:
                frame = self._packer.pack(m)
            except TooLarge:
                raise
            except BusError as exc:  # the handler's fault, not the caller's: not a bad_request
                raise InternalError(f"{env.method} emitted a chunk that cannot be sent: {exc.message}") from exc
            seq += 1
            if not await self._send_patiently(cl, header, frame):
                await asyncio.sleep(0)  # _send_patiently cancelled this task: let the CancelledError land
                raise InternalError("the client is gone")  # unreachable unless the handler ate the cancel

        assert env.method is not None
        call = Call(ref, env.method, env.body, cl.caller, emit)
        try:
            try:
                result = await self._dispatcher.dispatch(call)
                out = {"v": VERSION, "kind": result.kind, "id": self._ids(), "body": result.body, "ref": ref}
                try:
                    frame = self._packer.pack(out)
                except BusError as exc:
                    log.error("%s returned a body that cannot be sent: %s", env.method, exc.message)
                    frame = self._error_frame(ref, InternalError(f"{env.method} returned {exc.message}"))
            except asyncio.CancelledError:
                if job.reason is None or cl.gone:
                    raise
                await self._answer(cl, header, self._error_frame(ref, Cancelled(job.reason)))
                raise
            except BusError as exc:
                frame = self._error_frame(ref, exc)
            except Exception as exc:  # the hub maps handler failures; this is a failure of the hub itself
                log.exception("dispatch of %s failed", env.method)
                frame = self._error_frame(ref, InternalError(f"{env.method} failed: {type(exc).__name__}"))
            await self._answer(cl, header, frame)
        finally:
            cl.jobs.pop(ref, None)
            self._inflight -= 1
            if not cl.jobs and self._clients.get(cl.rid) is cl:
                del self._clients[cl.rid]

    async def _answer(self, cl: _Client, header: tuple[bytes, ...], frame: bytes) -> None:
        """Send the closing message of a request; a client that stopped reading is treated as gone."""
        try:
            await self._send_patiently(cl, header, frame)
        except Timeout:
            self._drop_client(cl)

    def _error_frame(self, ref: str, exc: BusError) -> bytes:
        self._stats["errors"] += 1
        return self._packer.pack(self._packer.error_map(self._ids(), ref, exc))

    def _send_error(self, header: tuple[bytes, ...], ref: str, exc: BusError) -> None:
        if self._try_send([*header, self._error_frame(ref, exc)]) == _AGAIN:
            # the client has SNDHWM answers unread; an error for a request it flooded us with may go
            self._stats["dropped"] += 1

    def _try_send(self, frames: list[bytes]) -> int:
        router = self._router
        if router is None:
            return _GONE
        try:
            router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return _AGAIN
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                log.warning("send to %s failed: %s", frames[0].hex(), exc)
            return _GONE
        finally:
            if self._rpc_pump is not None:
                self._rpc_pump.kick()  # the send may have eaten the FD's signal for waiting input
        return _OK

    async def _send_patiently(self, cl: _Client, header: tuple[bytes, ...], frame: bytes) -> bool:
        """Send one answer to ``cl``, waiting while its pipe is full; False (and ``cl`` dropped) if it is gone."""
        frames = [*header, frame]
        status = self._try_send(frames)
        if status == _OK:
            return True
        if status == _AGAIN:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.limits.stream_stall
            delay = 0.001
            while status == _AGAIN:
                if loop.time() > deadline:
                    raise Timeout(f"the client read nothing for {self.limits.stream_stall:g} s")
                await asyncio.sleep(delay)  # no event says "this one peer's pipe drained": poll with backoff
                delay = min(delay * 2, 0.05)
                status = self._try_send(frames)
            if status == _OK:
                return True
        self._drop_client(cl)
        return False

    def _drop_client(self, cl: _Client) -> None:
        """The client is unreachable: cancel everything it asked for; nobody is left to answer."""
        if cl.gone:
            return
        cl.gone = True
        self._stats["vanished"] += 1
        log.debug("client %s vanished with %d requests in flight", cl.rid.hex(), len(cl.jobs))
        for job in cl.jobs.values():
            if job.task is not None:
                job.task.cancel()

    def _probe_clients(self) -> None:
        """Send a heartbeat to every client with work in flight; the ones that are gone get dropped."""
        if not self._clients:
            return
        frame = self._packer.pack(self._heartbeat_map())
        for cl in list(self._clients.values()):
            if cl.gone or not cl.jobs:
                continue
            header = next(iter(cl.jobs.values())).header
            if self._try_send([*header, frame]) == _GONE:
                self._drop_client(cl)

    def _heartbeat_map(self) -> dict[str, Any]:
        body = {"node_id": self.node_id, "boot_id": self.boot_id, "ts": time.time()}
        return {"v": VERSION, "kind": "event", "id": self._ids(), "body": body, "topic": HEARTBEAT_TOPIC}

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
                self._enqueue_event(
                    HEARTBEAT_TOPIC, {"node_id": self.node_id, "boot_id": self.boot_id, "ts": time.time()}
                )
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
        if self._zap is not None:
            self._zap.reload()

    # -- events ---------------------------------------------------------------------------------------------
    def _on_event(self, topic: str, body: dict[str, Any]) -> None:
        self._enqueue_event(topic, body)

    def _enqueue_event(self, topic: str, body: dict[str, Any]) -> None:
        if len(self._evq) == self._evq.maxlen:
            self._stats["dropped"] += 1
        self._evq.append((topic, body))
        self._ev_wake.set()

    async def _event_loop(self) -> None:
        while True:
            if self._drain_events(256):
                await asyncio.sleep(0)  # a burst of events must not starve request handling
            else:
                self._ev_wake.clear()
                await self._ev_wake.wait()

    def _drain_events(self, budget: int) -> bool:
        """Send up to ``budget`` queued events; True when some are left."""
        xpub, evq, pack, ids = self._xpub, self._evq, self._packer.pack, self._ids
        if xpub is None:
            return False
        for _ in range(budget):
            if not evq:
                break
            topic, body = evq.popleft()
            m = {"v": VERSION, "kind": "event", "id": ids(), "body": body, "topic": topic, "ts": time.time()}
            try:
                frame = pack(m)
            except BusError as exc:
                self._stats["errors"] += 1
                log.error("event %s cannot be sent: %s", topic, exc.message)
                continue
            try:
                xpub.send_multipart([topic.encode(), frame], zmq.NOBLOCK)
            except zmq.ZMQError:  # XPUB drops rather than blocks; an error here means the socket is closing
                self._stats["dropped"] += 1
        if self._events_pump is not None:
            self._events_pump.kick()  # the sends may have eaten the FD's signal for waiting subscriptions
        return bool(evq)

    def _on_subscription(self, frames: list[bytes]) -> None:
        """Count subscriptions; reading them also keeps the XPUB from queueing them without bound."""
        msg = frames[0]
        if msg[:1] == b"\x01":
            self._stats["subscriptions"] += 1
        elif msg[:1] == b"\x00":
            self._stats["subscriptions"] = max(0, self._stats["subscriptions"] - 1)
