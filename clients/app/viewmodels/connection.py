"""The link to one daemon: connect, watch that it is alive, reconnect by itself, and pair with CURVE keys.

The SDK's ZeroMQ sockets reconnect on their own after sleep, network changes and daemon restarts; this view
model makes that visible. It listens to ``sys.`` events: a heartbeat means "connected", a missing heartbeat
for three intervals or ``sys.stopping`` means "reconnecting", and a new ``boot_id`` means the daemon
restarted. Each time the link comes (back) up, the other view models refresh what they show (``on_online``),
because events published while the link was down are gone.

Event subscriptions from every view model are made on one client. ZeroMQ applies them asynchronously, so
after subscribing the app publishes a probe (``app.sync`` with a nonce) and waits for it to come back: ZeroMQ
handles a socket's subscriptions in order, so once the probe arrives every subscription is live, and a
refresh made then cannot miss an event.

Pairing: the app creates its own CURVE key pair on first use (``AppStore.device_keypair``). To pair, the user
enters the daemon's public key (``enigmad keys show``); the app shows both fingerprints to compare and the
command that admits the device on the daemon (``enigmad keys allow …``). Loopback daemons need no keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import shlex
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bus.auth import ClientCurve, check_key, fingerprint
from bus.defaults import DEFAULT_HEARTBEAT
from bus.errors import BusError, Unavailable
from bus.topics import SYS, SYS_HEARTBEAT, SYS_STARTED, SYS_STOPPING
from clients.app.store import AppStore, DaemonEntry, DiscoveredDaemon
from clients.app.viewmodels.address import parse_address
from clients.app.viewmodels.base import Observable
from clients.sdk import Client, Event

log = logging.getLogger("enigma.app")


class LinkView(enum.StrEnum):
    """The app's view of its daemon link, as the user sees it (the SDK reconnects underneath)."""

    OFFLINE = "offline"  # no daemon chosen, or disconnected on purpose
    CONNECTING = "connecting"  # never answered yet since this connect
    CONNECTED = "connected"  # answering and in sync
    RECONNECTING = "reconnecting"  # was connected; lost it and trying again


SYNC_TOPIC = "app.sync"
SYNC_ATTEMPTS = 4  # probes without an answer on the event socket before the client is replaced
# The SDK's reasons (``Client.why_down``) for a refused handshake. ZeroMQ does not retry a refused handshake on
# the event socket, so once requests pass again (the key was allowed meanwhile) the client is replaced at once
# instead of after SYNC_ATTEMPTS probes.
_REFUSED = ("the server refused our CURVE key", "the security handshake failed")

EventHandler = Callable[[Event], None]
OnlineHandler = Callable[[bool], Coroutine[Any, Any, None]]


class _Resync(Exception):
    """Requests work but our own probe never comes back as an event: the event socket is stuck."""


@dataclass(frozen=True)
class PairingInfo:
    """What the pairing screen shows: both fingerprints to compare and the command to run on the daemon."""

    entry: DaemonEntry
    device_public: str
    device_fingerprint: str
    server_fingerprint: str
    allow_command: str


class ConnectionVM(Observable):
    """State ``offline | connecting | connected | reconnecting``, with ``detail`` saying why."""

    def __init__(
        self,
        store: AppStore,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        request_timeout: float = 30.0,
        device_name: str = "enigma-app",
    ) -> None:
        super().__init__()
        self.store = store
        self.heartbeat = heartbeat
        self.request_timeout = request_timeout
        self.device_name = device_name
        self.state = LinkView.OFFLINE
        self.detail = "not connected"
        self.daemon: DaemonEntry | None = None
        self.client: Client | None = None
        self.node_id: str | None = None
        self.boot_id: str | None = None
        self.discovered: list[DiscoveredDaemon] = []
        self.restarts = 0  # daemon restarts noticed since connecting (a new boot_id)
        self._routes: list[tuple[str, EventHandler]] = []
        self._online: list[OnlineHandler] = []
        self._watch: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._nonce = ""
        self._restarted = False
        self._refused = False  # a handshake of this client was refused (see _REFUSED)

    # -- wiring for the other view models ------------------------------------------------------------------
    def on_event(self, prefix: str, handler: EventHandler) -> None:
        """Deliver events whose topic starts with ``prefix`` to ``handler`` (set up before ``connect``)."""
        self._routes.append((prefix, handler))

    def on_online(self, handler: OnlineHandler) -> None:
        """``await handler(restarted)`` each time the link comes up; ``restarted`` when the daemon rebooted."""
        self._online.append(handler)

    def require(self) -> Client:
        """The client, or ``Unavailable`` when the app is not connected to a daemon."""
        if self.client is None:
            raise Unavailable("not connected to a daemon: pick one on the Connect screen")
        return self.client

    # -- discovery hook -------------------------------------------------------------------------------------
    def set_discovered(self, daemons: list[DiscoveredDaemon]) -> None:
        """Replace the list of daemons seen on the LAN (called by the discovery code, from the app's loop)."""
        self.discovered = list(daemons)
        self.notify("discovered", self.discovered)

    # -- pairing --------------------------------------------------------------------------------------------
    def device_identity(self) -> tuple[str, str]:
        """This device's public key and its fingerprint (the key pair is created on first use)."""
        kp = self.store.device_keypair()
        return kp.public, fingerprint(kp.public)

    def pair(self, name: str, address: str, server_public: str) -> PairingInfo:
        """Remember a daemon with its public key, so the app connects to it with CURVE from now on."""
        name = name.strip() or address.strip()
        rpc, events = parse_address(address)
        server_public = check_key(server_public.strip(), "the daemon's public key")
        entry = self.store.remember(DaemonEntry(name, rpc, events, server_public))
        public, device_fp = self.device_identity()
        # Z85 keys contain shell characters ($ & < > ^ …): quote them so the command can be pasted as is
        command = f"enigmad keys allow {shlex.quote(public)} --role user --name {shlex.quote(self.device_name)}"
        info = PairingInfo(entry, public, device_fp, fingerprint(server_public), command)
        self.notify("paired", info)
        return info

    def add_manual(self, address: str, name: str = "") -> DaemonEntry:
        """Remember a daemon typed in by hand (no keys: a loopback daemon, or pair it later)."""
        rpc, events = parse_address(address)
        old = self.store.get(name.strip() or address.strip())
        entry = DaemonEntry(name.strip() or address.strip(), rpc, events, old.server_public if old else None)
        return self.store.remember(entry)

    # -- connecting -----------------------------------------------------------------------------------------
    async def connect(self, entry: DaemonEntry) -> None:
        """Switch to ``entry`` and start connecting; returns at once (``wait_connected`` waits)."""
        await self.disconnect()
        self.daemon = self.store.remember(entry)
        settings = self.store.settings()
        settings.last_daemon = entry.name
        self.store.save_settings(settings)
        self.boot_id = None
        self.restarts = 0
        self._set(LinkView.CONNECTING, f"connecting to {entry.rpc}")
        self.notify("daemon", entry)
        self._watch = self.spawn(self._run(entry), name="enigma-app-watch")

    async def disconnect(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()
        self._synced.clear()
        if self.state != LinkView.OFFLINE:
            self._set(LinkView.OFFLINE, "not connected")

    async def aclose(self) -> None:
        await self.disconnect()
        await super().aclose()

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 (a user-facing wait with a limit)
        """Wait until the link is up and every subscription is live; ``Unavailable`` with the reason if not."""
        changed = asyncio.Event()
        unbind = self.bind(lambda what, _d: changed.set() if what in ("state", "synced") else None)
        try:
            async with asyncio.timeout(timeout):
                while not (self.state == LinkView.CONNECTED and self._synced.is_set()):
                    changed.clear()
                    await changed.wait()
        except TimeoutError:
            raise Unavailable(f"not connected after {timeout:g} s: {self.detail}") from None
        finally:
            unbind()

    def _set(self, state: LinkView, detail: str) -> None:
        if (state, detail) != (self.state, self.detail):
            self.state, self.detail = state, detail
            self.notify("state", state)

    # -- the watcher ----------------------------------------------------------------------------------------
    async def _run(self, entry: DaemonEntry) -> None:
        """Keep a client for ``entry``; start a fresh one when the link is up but events stopped flowing."""
        while True:
            curve = ClientCurve(entry.server_public, self.store.device_keypair()) if entry.server_public else None
            client = Client(
                entry.rpc, entry.events, timeout=self.request_timeout, curve=curve, heartbeat=self.heartbeat
            )
            await client.connect()
            self.client = client
            tasks = [
                self.spawn(self._pump(client, prefix, handler), name=f"enigma-app-events-{prefix}")
                for prefix, handler in self._routes
            ]
            try:
                await self._watch_link(client)
            except _Resync:
                log.info("events from %s stopped flowing or were refused: starting a fresh client", entry.events)
                self._synced.clear()  # once the new client is in sync, the views reload what they missed
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if self.client is client:
                    self.client = None
                await client.close()

    async def _pump(self, client: Client, prefix: str, handler: EventHandler) -> None:
        async with client.subscribe(prefix) as sub:
            async for ev in sub:
                try:
                    handler(ev)
                except Exception:
                    log.exception("handler for %s failed", ev.topic)

    async def _watch_link(self, client: Client) -> None:
        """Follow ``sys.`` events and probes until the link needs a fresh client (``_Resync``)."""
        stale_after = 3 * self.heartbeat + 0.5
        async with client.subscribe(SYS) as sys_events, client.subscribe(SYNC_TOPIC) as sync_events:
            await self._probe(client)
            events = asyncio.Queue[Event]()
            feeders = [self.spawn(self._feed(s, events)) for s in (sys_events, sync_events)]
            try:
                unanswered = 0  # sync probes published since events last proved to flow
                while True:
                    checking = self.state == LinkView.CONNECTED and (not self._synced.is_set() or unanswered > 0)
                    if checking:
                        if unanswered >= SYNC_ATTEMPTS:
                            raise _Resync
                        unanswered += 1
                        self.spawn(self._publish_probe(client), name="enigma-app-probe")
                    try:
                        quiet_ok = self._synced.is_set() and not checking  # only a healthy link may be quiet long
                        async with asyncio.timeout(stale_after if quiet_ok else self.heartbeat):
                            ev = await events.get()
                    except TimeoutError:
                        if await self._probe(client) and self._synced.is_set():
                            unanswered = max(unanswered, 1)  # the daemon answers, its events stopped: check
                        continue
                    if ev.topic in (SYS_HEARTBEAT, SYS_STARTED):
                        await self._alive(client, ev.body)
                        if self._synced.is_set():
                            unanswered = 0
                    elif ev.topic == SYS_STOPPING:
                        self._synced.clear()
                        reason = ev.body.get("reason", "shutdown")
                        self._set(LinkView.RECONNECTING, f"the daemon is stopping ({reason})")
                    elif ev.topic == SYNC_TOPIC and ev.body.get("nonce") == self._nonce:
                        unanswered = 0
                        await self._now_synced()
            finally:
                for f in feeders:
                    f.cancel()
                await asyncio.gather(*feeders, return_exceptions=True)

    async def _feed(self, sub: Any, queue: asyncio.Queue[Event]) -> None:
        async for ev in sub:
            queue.put_nowait(ev)

    async def _probe(self, client: Client) -> bool:
        """Ping the daemon; True when it answered."""
        try:
            pong = await client.call("sys.ping", timeout=max(self.heartbeat, 1.0))
        except BusError as exc:
            self._refused = self._refused or client.why_down.startswith(_REFUSED)
            self._synced.clear()
            was_up = self.state in (LinkView.CONNECTED, LinkView.RECONNECTING)
            self._set(LinkView.RECONNECTING if was_up else LinkView.CONNECTING, exc.message)
            return False
        if self._refused:
            self._refused = False
            raise _Resync
        await self._alive(client, pong)
        return True

    async def _alive(self, client: Client, body: dict[str, Any]) -> None:
        boot = body.get("boot_id")
        restarted = self.boot_id is not None and isinstance(boot, str) and boot != self.boot_id
        if isinstance(boot, str):
            self.boot_id = boot
        if isinstance(body.get("node_id"), str):
            self.node_id = body["node_id"]
        if restarted:
            self.restarts += 1
            self._synced.clear()
        if self.state != LinkView.CONNECTED or restarted:
            self._synced.clear()
            self._set(LinkView.CONNECTED, f"connected to {self.node_id or client.rpc}")
            self._nonce = secrets.token_hex(8)
            self._restarted = restarted
            await self._publish_probe(client)

    async def _publish_probe(self, client: Client) -> None:
        """Publish the sync probe; the watcher sees it come back once the daemon has every subscription."""
        with contextlib.suppress(BusError):
            await client.call("bus.publish", {"topic": SYNC_TOPIC, "body": {"nonce": self._nonce}}, timeout=5.0)

    async def _now_synced(self) -> None:
        if self._synced.is_set():
            return
        self._synced.set()
        self.notify("synced", True)
        if self.daemon is not None and self.node_id and self.daemon.node_id != self.node_id:
            self.daemon.node_id = self.node_id
            self.store.remember(self.daemon, touch=False)
        for handler in list(self._online):
            self.spawn(handler(self._restarted), name="enigma-app-online")
