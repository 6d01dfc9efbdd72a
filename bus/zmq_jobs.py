"""The ZeroMQ server's job table: requests in flight per client, their answers, and back-pressure.

Each admitted request runs as one task (a ``Job``) filed under its client's routing id, and ends with exactly one
closing message. What bounds memory, and what happens at each bound:

- per client, ``max_inflight_per_client`` requests run at once (``max_inflight`` in all); the next is ``busy``;
- per client, ZeroMQ's pipe (``SNDHWM`` messages) is the stream queue: when it is full the ROUTER reports
  EAGAIN (``ROUTER_MANDATORY``) and ``Call.emit`` waits, which is the handler's back-pressure; a client that
  reads nothing for ``stream_stall`` seconds has its stream ended with ``timeout``;
- a client that vanished is found by ``EHOSTUNREACH`` when its next message is sent, and by ``probe()`` (a
  heartbeat sent to every client with work in flight): its tasks are cancelled, since nobody is left to answer.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
from typing import TYPE_CHECKING, Any

import zmq

from bus.envelope import Envelope, answer_map, chunk_map, error_map
from bus.errors import BusError, Busy, Cancelled, Conflict, InternalError, Timeout, TooLarge
from bus.service import Call, Caller, Dispatcher
from bus.wire import IdMaker, Packer, Pump

if TYPE_CHECKING:
    from bus.zmq_server import ServerLimits

log = logging.getLogger("enigma.bus.zmq")

Header = tuple[bytes, ...]  # the routing id, plus the empty delimiter a REQ socket expects back


class Sent(enum.Enum):
    """What became of one non-blocking send on the ROUTER."""

    OK = enum.auto()
    AGAIN = enum.auto()  # the client's pipe is full (SNDHWM): try again later
    GONE = enum.auto()  # the client is unreachable (EHOSTUNREACH) or the socket is closing


class Job:
    __slots__ = ("header", "reason", "task")

    def __init__(self, header: Header) -> None:
        self.header = header
        self.task: asyncio.Task[None] | None = None
        self.reason: str | None = None  # why we cancelled it; None = the client vanished, answer nobody


class Peer:
    """One client with requests in flight, by its routing id."""

    __slots__ = ("caller", "gone", "jobs", "rid")

    def __init__(self, rid: bytes, caller: Caller) -> None:
        self.rid = rid
        self.caller = caller
        self.jobs: dict[str, Job] = {}
        self.gone = False


class Jobs:
    """The requests in flight, by client; runs each through the dispatcher and sends its answers."""

    def __init__(self, dispatcher: Dispatcher, limits: ServerLimits, ids: IdMaker, packer: Packer) -> None:
        self._dispatcher = dispatcher
        self.limits = limits
        self._ids = ids
        self._packer = packer
        self.router: zmq.Socket | None = None
        self.pump: Pump | None = None  # the ROUTER's pump, kicked after each send
        self.clients: dict[bytes, Peer] = {}
        self.inflight = 0
        self.stats = {"errors": 0, "busy": 0, "dropped": 0, "vanished": 0}

    def client(self, rid: bytes) -> Peer | None:
        return self.clients.get(rid)

    def admit(self, header: Header, env: Envelope, cl: Peer) -> None:
        """Start ``env`` for ``cl``, or answer ``busy``/``conflict`` when a bound or its id forbids it."""
        if len(cl.jobs) >= self.limits.max_inflight_per_client or self.inflight >= self.limits.max_inflight:
            self.stats["busy"] += 1
            limit = self.limits.max_inflight_per_client
            self.send_error(header, env.id, Busy(f"too many requests in flight (limit {limit} per client)"))
            return
        if env.id in cl.jobs:
            self.send_error(header, env.id, Conflict(f"request id {env.id!r} is already in flight"))
            return
        self.clients[cl.rid] = cl
        job = Job(header)
        cl.jobs[env.id] = job
        self.inflight += 1
        job.task = asyncio.get_running_loop().create_task(self._run(cl, job, env))

    def cancel(self, rid: bytes, ref: str) -> None:
        """The client's own ``cancel``: its stream ends with ``cancelled``; unknown or finished ids are ignored."""
        cl = self.clients.get(rid)
        job = cl.jobs.get(ref) if cl is not None else None
        if job is not None and job.task is not None and job.reason is None:
            job.reason = "cancelled by the client"
            job.task.cancel()

    def cancel_all(self, reason: str, *, keep: asyncio.Task[Any] | None = None) -> list[asyncio.Task[None]]:
        """End every request in flight but ``keep`` with ``cancelled`` (``reason`` is the message)."""
        tasks = []
        for cl in list(self.clients.values()):
            for job in cl.jobs.values():
                if job.task is not None and job.task is not keep and not job.task.done() and job.reason is None:
                    job.reason = reason
                    job.task.cancel()
                    tasks.append(job.task)
        return tasks

    async def _run(self, cl: Peer, job: Job, env: Envelope) -> None:
        ref = env.id
        header = job.header
        seq = 0

        async def emit(body: dict[str, Any]) -> None:
            nonlocal seq
            m = chunk_map(self._ids(), ref, seq, body)
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
                out = answer_map(result.kind, self._ids(), ref, result.body)
                try:
                    frame = self._packer.pack(out)
                except BusError as exc:
                    log.error("%s returned a body that cannot be sent: %s", env.method, exc.message)
                    frame = self.error_frame(ref, InternalError(f"{env.method} returned {exc.message}"))
            except asyncio.CancelledError:
                if job.reason is None or cl.gone:
                    raise
                await self._answer(cl, header, self.error_frame(ref, Cancelled(job.reason)))
                raise
            except BusError as exc:
                frame = self.error_frame(ref, exc)
            except Exception as exc:  # the hub maps handler failures; this is a failure of the hub itself
                log.exception("dispatch of %s failed", env.method)
                frame = self.error_frame(ref, InternalError(f"{env.method} failed: {type(exc).__name__}"))
            await self._answer(cl, header, frame)
        finally:
            cl.jobs.pop(ref, None)
            self.inflight -= 1
            if not cl.jobs and self.clients.get(cl.rid) is cl:
                del self.clients[cl.rid]

    async def _answer(self, cl: Peer, header: Header, frame: bytes) -> None:
        """Send the closing message of a request; a client that stopped reading is treated as gone."""
        try:
            await self._send_patiently(cl, header, frame)
        except Timeout:
            self._drop(cl)

    def error_frame(self, ref: str, exc: BusError) -> bytes:
        self.stats["errors"] += 1
        return self._packer.pack(error_map(self._ids(), ref, exc))

    def send_error(self, header: Header, ref: str, exc: BusError) -> None:
        """Answer ``ref`` with ``exc`` now; dropped (and counted) if the client has SNDHWM answers unread."""
        if self.try_send([*header, self.error_frame(ref, exc)]) is Sent.AGAIN:
            self.stats["dropped"] += 1

    def try_send(self, frames: list[bytes]) -> Sent:
        router = self.router
        if router is None:
            return Sent.GONE
        try:
            router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return Sent.AGAIN
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                log.warning("send to %s failed: %s", frames[0].hex(), exc)
            return Sent.GONE
        finally:
            if self.pump is not None:
                self.pump.kick()  # the send may have eaten the FD's signal for waiting input
        return Sent.OK

    async def _send_patiently(self, cl: Peer, header: Header, frame: bytes) -> bool:
        """Send one answer to ``cl``, waiting while its pipe is full; False (and ``cl`` dropped) if it is gone."""
        frames = [*header, frame]
        status = self.try_send(frames)
        if status is Sent.OK:
            return True
        if status is Sent.AGAIN:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.limits.stream_stall
            delay = 0.001
            while status is Sent.AGAIN:
                if loop.time() > deadline:
                    raise Timeout(f"the client read nothing for {self.limits.stream_stall:g} s")
                await asyncio.sleep(delay)  # no event says "this one peer's pipe drained": poll with backoff
                delay = min(delay * 2, 0.05)
                status = self.try_send(frames)
            if status is Sent.OK:
                return True
        self._drop(cl)
        return False

    def _drop(self, cl: Peer) -> None:
        """The client is unreachable: cancel everything it asked for; nobody is left to answer."""
        if cl.gone:
            return
        cl.gone = True
        self.stats["vanished"] += 1
        log.debug("client %s vanished with %d requests in flight", cl.rid.hex(), len(cl.jobs))
        for job in cl.jobs.values():
            if job.task is not None:
                job.task.cancel()

    def probe(self, heartbeat: dict[str, Any]) -> None:
        """Send ``heartbeat`` to every client with work in flight; the ones that are gone get dropped."""
        if not self.clients:
            return
        frame = self._packer.pack(heartbeat)
        for cl in list(self.clients.values()):
            if cl.gone or not cl.jobs:
                continue
            header = next(iter(cl.jobs.values())).header
            if self.try_send([*header, frame]) is Sent.GONE:
                self._drop(cl)
