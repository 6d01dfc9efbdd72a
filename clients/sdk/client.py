"""The async client: one DEALER for requests, one SUB (opened on first subscribe) for events.

Both sockets are read by a ``Pump`` on the event loop, which routes every answer to the request waiting for
it by ``ref``; each request waits with its own timeout. A socket monitor tells whether the daemon is
reachable, so a request that got no answer raises ``Unavailable`` ("is enigmad running?") when there is no
connection and ``Timeout`` when there is one. A request sent while the daemon is starting waits in the
socket's queue and is delivered once it is up; a request that timed out while the daemon was unreachable is
withdrawn by replacing the request socket, so it never runs later on a daemon that comes up. (The socket does
not use ``ZMQ_IMMEDIATE``: that option also throws away answers already received when a connection drops,
such as the ``cancelled`` a daemon sends as it shuts down.) Subscriptions survive daemon restarts: the SUB
reconnects and re-sends its filters, and a new ``boot_id`` in ``sys.heartbeat`` makes the client subscribe
again anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from bus.auth import ClientCurve
from bus.defaults import DEFAULT_HEARTBEAT, events_endpoint, rpc_endpoint
from bus.envelope import DecodeError, Envelope, cancel_map, decode, request_map
from bus.errors import BadRequest, BusError, Timeout, Unavailable
from bus.states import Lifecycle
from bus.topics import SYS_HEARTBEAT
from bus.wire import MAX_MSG_SIZE, IdMaker, Packer, Pump, set_heartbeat
from clients.sdk.streams import Event, Stream, Subscription

__all__ = ["Client", "Event", "Stream", "Subscription"]

log = logging.getLogger("enigma.sdk")

LIVE_PROBE_PREFIX = "client.live."  # Subscription.live() publishes here
_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_CONNECT_RETRIED
)


class Client:
    """``async with Client() as c: await c.call("sys.ping")`` — see the module docstring for behaviour."""

    def __init__(
        self,
        rpc: str | None = None,
        events: str | None = None,
        *,
        timeout: float = 30.0,
        curve: ClientCurve | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_stream_queue: int = 4096,
        max_event_queue: int = 10_000,
        on_link: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_link(up)`` is called on every change of ``connected`` the socket monitor reports."""
        self.rpc = rpc_endpoint(rpc)
        self.events = events_endpoint(events)
        self.timeout = timeout
        self.boot_id: str | None = None
        self.node_id: str | None = None
        self._curve = curve
        self._heartbeat = heartbeat
        self._max_stream_queue = max_stream_queue
        self._max_event_queue = max_event_queue
        self._on_link = on_link
        self._state = Lifecycle.NEW
        self._ctx: zmq.Context[Any] | None = None
        self._dealer: zmq.Socket[bytes] | None = None
        self._sub: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._pumps: list[Pump] = []
        self._rpc_pump: Pump | None = None
        self._monitor_pump: Pump | None = None
        self._sub_pump: Pump | None = None
        self._handshake = asyncio.Event()
        self._pending: dict[str, asyncio.Future[Envelope] | Stream] = {}
        self._subs: list[Subscription] = []
        self._filters: dict[str, int] = {}
        self._ids = IdMaker()
        self._packer = Packer()
        self._up = False
        self._why_down = "no connection yet"
        self.undecodable = 0

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Create the sockets and start connecting; never waits for the daemon (requests do)."""
        if self._state is not Lifecycle.NEW:
            raise RuntimeError(f"Client.connect() called in state {self._state}")
        self._ctx = zmq.Context()
        try:
            self._open_dealer()
        except zmq.ZMQError as exc:
            self._destroy()
            raise BadRequest(f"cannot connect to {self.rpc}: {exc.strerror}") from exc
        self._state = Lifecycle.OPEN

    def _open_dealer(self) -> None:
        self._dealer = self._socket(zmq.DEALER)
        self._monitor = self._dealer.get_monitor_socket(_MONITOR_EVENTS)
        self._dealer.connect(self.rpc)
        self._rpc_pump = Pump(self._dealer, self._on_answer, name="rpc")
        self._monitor_pump = Pump(self._monitor, self._on_monitor, name="monitor")
        self._pumps += [self._rpc_pump, self._monitor_pump]

    def _replace_dealer(self) -> None:
        """Throw away the request socket and what it queued for a daemon that never answered."""
        if self._dealer is None or self._state is not Lifecycle.OPEN:
            return
        for pump in (self._rpc_pump, self._monitor_pump):
            if pump is not None:
                pump.close()
                self._pumps.remove(pump)
        with contextlib.suppress(zmq.ZMQError):
            self._dealer.disable_monitor()
        for sock in (self._monitor, self._dealer):
            if sock is not None:
                sock.close(linger=0)
        self._up = False
        self._open_dealer()

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_SIZE)
        set_heartbeat(sock, self._heartbeat)
        if self._curve is not None:
            sock.curve_serverkey = self._curve.server_public.encode("ascii")
            sock.curve_publickey = self._curve.keypair.public.encode("ascii")
            sock.curve_secretkey = self._curve.keypair.secret.encode("ascii")
        return sock

    async def close(self) -> None:
        """Cancel what is in flight (telling the server), end subscriptions, close the sockets."""
        if self._state is not Lifecycle.OPEN:
            self._state = Lifecycle.CLOSED
            return
        self._state = Lifecycle.CLOSING
        for rid, target in list(self._pending.items()):
            self._send_cancel(rid)
            if isinstance(target, Stream):
                target._closed()
            elif not target.done():
                target.cancel()
        for s in list(self._subs):
            s._close_from_client()
        self._destroy()
        self._handshake.set()  # a request waiting for a connection wakes up and sees the client closed
        self._state = Lifecycle.CLOSED

    def _destroy(self) -> None:
        for pump in self._pumps:
            pump.close()
        if self._dealer is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._dealer.disable_monitor()
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
        self._ctx = self._dealer = self._sub = self._monitor = None

    def _ensure_open(self) -> None:
        if self._state is not Lifecycle.OPEN:
            raise Unavailable(f"the client for {self.rpc} is {self._state}; use `async with Client(...)`")

    @property
    def connected(self) -> bool:
        """True while a handshake with the daemon's request socket has succeeded and not dropped since."""
        return self._up

    async def wait_connected(self, within: float) -> bool:
        """Wait until ``connected``; False if the handshake has not succeeded within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while not self._up:
                    self._ensure_open()
                    self._handshake.clear()
                    await self._handshake.wait()
        except TimeoutError:
            return False
        return True

    @property
    def why_down(self) -> str:
        """Why the last connection attempt failed or the connection dropped (meaningful while not connected)."""
        return self._why_down

    def fail_pending(self, error: BusError) -> None:
        """End every call and stream in flight with ``error``: for a caller that knows no answer will come."""
        body = error.to_body()
        for target in list(self._pending.values()):
            if isinstance(target, Stream):
                target._push(Envelope("error", body=body))
            elif not target.done():
                target.set_result(Envelope("error", body=body))

    # -- requests -------------------------------------------------------------------------------------------
    async def call(
        self,
        method: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (agreed interface; the wait also bounds the send)
    ) -> dict[str, Any]:
        """Send one request and return the ``reply`` body; raises the ``bus.errors`` class of an ``error``."""
        self._ensure_open()
        t = self.timeout if timeout is None else timeout
        fut: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        rid = ""
        try:
            async with asyncio.timeout(t):
                rid = await self._start_request(method, body or {}, fut, None)
                env = await fut
        except TimeoutError:
            self._send_cancel(rid)
            raise self._no_answer(method, t) from None
        except asyncio.CancelledError:
            self._send_cancel(rid)
            raise
        finally:
            self._forget(rid)
        if env.kind == "reply":
            return env.body
        if env.kind == "error":
            raise BusError.from_body(env.body)
        self._send_cancel(rid)
        raise BadRequest(f"{method} is a streaming method: use Client.stream()")

    def stream(self, method: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> Stream:
        """A streaming request; ``timeout`` bounds the wait for each next chunk (default: the client's)."""
        self._ensure_open()
        return Stream(self, method, body or {}, self.timeout if timeout is None else timeout, self._max_stream_queue)

    async def _start_request(
        self, method: str, body: dict[str, Any], target: asyncio.Future[Envelope] | Stream, send_within: float | None
    ) -> str:
        self._ensure_open()
        assert self._dealer is not None
        rid = self._ids()
        # TooLarge / BadRequest before anything is sent
        frame = self._packer.pack(request_map(rid, method, body, time.time()))
        self._pending[rid] = target
        try:
            async with asyncio.timeout(send_within):
                await self._send(frame)
        except TimeoutError:
            self._forget(rid)
            raise self._no_answer(method, send_within or 0.0) from None
        except BaseException:
            self._forget(rid)
            raise
        return rid

    async def _send(self, frame: bytes) -> None:
        """Send now, or wait while ``SNDHWM`` requests are queued (for a connection or for the pipe to drain)."""
        delay = 0.001
        while True:
            dealer = self._dealer
            if dealer is None:
                raise Unavailable(f"the client for {self.rpc} was closed")
            try:
                dealer.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            finally:
                if self._rpc_pump is not None:
                    self._rpc_pump.kick()  # a send can eat the FD's signal for waiting answers
            if not self._up:
                self._handshake.clear()
                await self._handshake.wait()
            else:  # connected but SNDHWM requests unsent, or the pipe is still being attached: back off
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _no_answer(self, method: str, timeout: float) -> BusError:
        if not self._up:
            self._replace_dealer()
            return Unavailable(
                f"no answer from {self.rpc} (is enigmad running?): {self._why_down}",
                {"endpoint": self.rpc, "method": method},
            )
        return Timeout(f"{method}: no answer within {timeout:g} s", {"method": method})

    async def _wait(
        self, wake: asyncio.Event, within: float | None, method: str, on_timeout: Callable[[], None]
    ) -> None:
        try:
            async with asyncio.timeout(within):
                await wake.wait()
        except TimeoutError:
            on_timeout()
            raise self._no_answer(method, within or 0.0) from None

    def _send_cancel(self, rid: str) -> None:
        if not rid or self._dealer is None:
            return
        frame = self._packer.pack(cancel_map(self._ids(), rid))
        with contextlib.suppress(zmq.ZMQError):  # a cancel that cannot leave now is moot: we are disconnected
            self._dealer.send(frame, zmq.NOBLOCK)
        if self._rpc_pump is not None:
            self._rpc_pump.kick()

    def _forget(self, rid: str) -> None:
        if rid:
            self._pending.pop(rid, None)

    def _on_answer(self, frames: list[bytes]) -> None:
        try:
            env = decode(frames[-1])
        except DecodeError as exc:
            self.undecodable += 1
            log.warning("undecodable answer from %s: %s", self.rpc, exc.message)
            return
        if env.kind == "event":  # the server probes clients with work in flight with heartbeats
            if env.topic == SYS_HEARTBEAT:
                self._note_boot(env.body)
            return
        target = self._pending.get(env.ref or "")
        if target is None:
            return  # the answer to something we gave up on
        if isinstance(target, Stream):
            target._push(env)
        elif not target.done():
            target.set_result(env)

    def _on_monitor(self, frames: list[bytes]) -> None:
        was = self._up
        kind = parse_monitor_message(frames)["event"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._up = True
            self._handshake.set()
        elif kind == zmq.EVENT_DISCONNECTED:
            if self._up:  # after a failed handshake, keep the reason the handshake gave
                self._why_down = "the connection dropped"
            self._up = False
        elif kind == zmq.EVENT_CONNECT_RETRIED:
            self._up, self._why_down = False, "connection refused"
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._up, self._why_down = False, "the server refused our CURVE key"
        else:
            self._up, self._why_down = False, "the security handshake failed (CURVE keys or settings differ)"
        if self._on_link is not None and self._up != was:
            self._on_link(self._up)

    # -- events ---------------------------------------------------------------------------------------------
    def subscribe(self, prefix: str = "") -> Subscription:
        """Events whose topic starts with ``prefix`` (``""`` for all), as an async iterator of ``Event``."""
        self._ensure_open()
        return Subscription(self, prefix, self._max_event_queue)

    async def _add_subscription(self, sub: Subscription) -> None:
        self._ensure_open()
        if self._sub is None:
            self._sub = self._socket(zmq.SUB)
            self._sub.connect(self.events)
            self._filter(SYS_HEARTBEAT, +1)  # to notice a restarted daemon
            self._sub_pump = Pump(self._sub, self._on_event, name="events")
            self._pumps.append(self._sub_pump)
        self._subs.append(sub)
        self._filter(sub.prefix, +1)

    async def _until_live(self) -> None:
        """Publish a probe on a topic of our own until it comes back: one SUB socket applies its filters in
        order, so once the probe's filter is live every earlier one is too. (``bus.publish`` is open to every
        role, so any client can do this.)"""
        topic = f"{LIVE_PROBE_PREFIX}{secrets.token_hex(8)}"
        timeout = self.timeout
        try:
            async with asyncio.timeout(timeout), self.subscribe(topic) as probe:
                wait = 0.05
                while True:
                    await self.call("bus.publish", {"topic": topic, "body": {}}, timeout=timeout)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(anext(probe), wait)
                        return
                    wait = min(wait * 2, 1.0)
        except TimeoutError:
            raise Timeout(f"no events from {self.events} within {timeout:g} s: the subscription is not live") from None

    def _remove_subscription(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._filter(sub.prefix, -1)

    def _filter(self, prefix: str, delta: int) -> None:
        if self._sub is None:
            return
        n = self._filters.get(prefix, 0) + delta
        if n > 0:
            self._filters[prefix] = n
        else:
            self._filters.pop(prefix, None)
        if delta > 0 and n == 1:
            self._sub.subscribe(prefix.encode())
        elif delta < 0 and n == 0:
            self._sub.unsubscribe(prefix.encode())
        if self._sub_pump is not None:
            self._sub_pump.kick()

    def _note_boot(self, body: dict[str, Any]) -> None:
        boot = body.get("boot_id")
        if not isinstance(boot, str) or boot == self.boot_id:
            return
        restarted = self.boot_id is not None
        self.boot_id = boot
        node = body.get("node_id")
        self.node_id = node if isinstance(node, str) else self.node_id
        if restarted and self._sub is not None:
            log.info("daemon at %s restarted (boot %s): subscribing again", self.events, boot)
            for prefix in self._filters:
                self._sub.unsubscribe(prefix.encode())
                self._sub.subscribe(prefix.encode())
            if self._sub_pump is not None:
                self._sub_pump.kick()

    def _on_event(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 2:
                raise DecodeError(f"expected [topic, envelope], got {len(frames)} frames")
            env = decode(frames[1])
            if env.kind != "event" or env.topic is None:
                raise DecodeError(f"expected an event, got {env.kind!r}")
        except DecodeError as exc:
            self.undecodable += 1
            log.warning("undecodable event from %s: %s", self.events, exc.message)
            return
        topic = env.topic
        if topic == SYS_HEARTBEAT:
            self._note_boot(env.body)
        ev = Event(topic, env.body, env.ts, env.id)
        for s in self._subs:
            if topic.startswith(s.prefix):
                s._push(ev)
