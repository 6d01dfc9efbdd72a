"""The peers service: links to paired daemons, discovery, pairing, and the handlers of ``peers.*``.

``daemon.modules.peers.module`` builds it from the checked ``[modules.peers]`` table and the daemon's ``Node``
and ``NodeKeys`` services. Links (``link``) keep each paired daemon's capabilities current; the router
(``router``) sends LLM work to the peer that has the model; the mirror (``mirror``) re-publishes chosen events
of paired daemons here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from bus.auth import AllowList, KeyPair, endpoint_host, fingerprint, is_loopback
from bus.discovery import Announcer, BroadcastBeacon, Record, browse
from bus.envelope import new_id
from bus.errors import BadRequest, BusError, NotFound, Unavailable
from bus.pairing import Identity, Paired, PairingWindow, pair_with
from bus.service import ROLES, Call, Caller
from daemon.hub import Hub
from daemon.manager import read_mem_available
from daemon.module import method
from daemon.modules.peers.link import PeerLink
from daemon.modules.peers.mirror import Mirror
from daemon.modules.peers.router import Router
from daemon.modules.peers.store import PeerEntry, PeerStore
from daemon.services import Node, NodeKeys

PEERS_STATE = "peers.state"  # {"node_id", "state", "error"?}: a link went up or down
PEERS_PAIRED = "peers.paired"  # {"node_id", "name", "fingerprint", "role"}
PEERS_UNPAIRED = "peers.unpaired"  # {"node_id"}

_ROLE = {"enum": list(ROLES)}
_REF = {"type": "string", "minLength": 1, "maxLength": 128}
PAIR_OPEN_SCHEMA = {
    "type": "object",
    "properties": {"role": _ROLE, "ttl": {"type": "number", "minimum": 5, "maximum": 3600}},
}
PAIR_SCHEMA = {
    "type": "object",
    "properties": {
        "endpoint": {"type": "string", "pattern": "^tcp://", "maxLength": 256},
        "code": {"type": "string", "minLength": 6, "maxLength": 16},
        "role": _ROLE,
        "name": {"type": "string", "maxLength": 64},
    },
    "required": ["endpoint", "code"],
}
UNPAIR_SCHEMA = {"type": "object", "properties": {"peer": _REF}, "required": ["peer"]}
DISCOVER_SCHEMA = {"type": "object", "properties": {"duration": {"type": "number", "minimum": 0.1, "maximum": 30}}}
EMPTY_SCHEMA: dict[str, Any] = {"type": "object"}

# Who this module is when it asks the local handlers (llm.stats, robot.list) for its capability record.
_LOCAL_CALLER = Caller("local", "peers", "admin")


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _is_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)


def _accelerators() -> list[str]:
    """What the engine could run on, without importing torch just to ask (it is loaded when the LLM is)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    found = []
    with contextlib.suppress(Exception):
        if torch.cuda.is_available():
            found += [f"cuda:{torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    with contextlib.suppress(Exception):
        if torch.backends.mps.is_available():
            found.append("mps")
    return found


class PeersService:
    """The LAN side of one daemon: its paired peers and their links, discovery, pairing windows, the router
    and the mirror. ``start()`` after the handlers are served; ``close()`` undoes it all."""

    def __init__(
        self,
        hub: Hub,
        node: Node,
        keys: NodeKeys,
        store: PeerStore,
        opts: dict[str, Any],
        publish: Callable[[str, dict[str, Any]], None],
        log: logging.Logger,
    ) -> None:
        self.hub = hub
        self.node = node
        self.node_id = node.node_id
        self.keypair: KeyPair
        self.allow: AllowList
        self.keypair, self.allow = keys.curve()
        self.store = store
        self.opts = opts
        self.publish = publish
        self.log = log
        self.links: dict[str, PeerLink] = {}
        self.window: PairingWindow | None = None
        self.announcer: Announcer | None = None
        self.beacons: list[BroadcastBeacon] = []
        self.discovery_reason = "not started"
        self._undo_fronts: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.router = Router(
            hub,
            lambda: list(self.links.values()),
            store.keys,
            prefer=opts["prefer"],
            fallback_local=opts["fallback_local"],
            timeout=opts["timeout"],
        )
        self.mirror = Mirror(opts["mirror"], publish)

    def _endpoints(self) -> dict[str, str]:
        return self.node.endpoints()

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Link to every paired peer, put the router in front of the LLM methods, and announce this daemon
        once its endpoints are known (``discover_when_bound``)."""
        for peer in self.store.all():
            await self._link(peer)
        self._undo_fronts = self.router.install()  # last: a failed load must leave no front behind

    def discover_when_bound(self) -> bool:
        """Start discovery now if the server is bound; False: call it again on ``sys.started``."""
        if not self._endpoints():
            return False
        self._spawn(self._start_discovery())
        return True

    async def close(self) -> None:
        for undo in self._undo_fronts:
            undo()
        self._undo_fronts = []
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.window is not None:
            await self.window.close()
        await self.mirror.close()
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()
        await self._stop_discovery()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- discovery --------------------------------------------------------------------------------------------
    def _interfaces(self) -> tuple[list[str], str]:
        """Where to announce, or why nowhere: never while every endpoint is loopback."""
        eps = self._endpoints()
        if not eps or all(is_loopback(e) for e in eps.values()):
            return [], "bound to loopback only: nothing to announce"
        configured = self.opts["interfaces"]
        if configured is not None:
            return (configured, "") if configured else ([], "modules.peers.interfaces is empty")
        host = endpoint_host(eps["rpc"])
        if _is_ipv4(host) and host != "0.0.0.0":
            return [host], ""
        return [], f"rpc binds {host}: set modules.peers.interfaces to the addresses to announce on"

    async def record(self) -> Record:
        eps = self._endpoints()
        info = await self.node_info()
        return Record(
            node_id=self.node_id,
            version=info["version"],
            rpc=eps.get("rpc", ""),
            events=eps.get("events", ""),
            key=info["key"],
            fingerprint=info["fingerprint"],
            caps=info["caps"],
        )

    async def _start_discovery(self) -> None:
        interfaces, reason = self._interfaces()
        if not interfaces:
            self.discovery_reason = reason
            self.log.info("discovery: announcing nothing (%s)", reason)
            return
        rec = await self.record()
        if self.opts["announce"]:
            ann = Announcer(rec, interfaces, _port(rec.rpc))
            try:
                await ann.start()
                self.announcer = ann
            except BusError as exc:
                self.log.error("discovery: %s", exc.message)
        for iface, bcast in zip(interfaces, self.opts["broadcast"], strict=False):
            beacon = BroadcastBeacon(rec, iface, bcast, interval=self.opts["refresh"])
            await beacon.start()
            self.beacons.append(beacon)
        self.discovery_reason = "" if self.announcer or self.beacons else "announce is off and no broadcast is set"
        self._spawn(self._reannounce())

    async def _reannounce(self) -> None:
        """Keep the announced capabilities (models, load, free memory) current."""
        while True:
            await asyncio.sleep(self.opts["refresh"])
            rec = await self.record()
            if self.announcer is not None:
                await self.announcer.update(rec)
            for b in self.beacons:
                b.update(rec)

    async def _stop_discovery(self) -> None:
        if self.announcer is not None:
            await self.announcer.close()
            self.announcer = None
        for b in self.beacons:
            await b.close()
        self.beacons = []

    # -- links ------------------------------------------------------------------------------------------------
    async def _link(self, peer: PeerEntry, *, wait_up: bool = False) -> None:
        """Start the link to ``peer``; ``wait_up`` waits for its first capability refresh (up or down)."""
        if not peer.is_daemon or peer.node_id in self.links:
            return
        link = PeerLink(
            peer, self.keypair, refresh=self.opts["refresh"], timeout=self.opts["timeout"], on_change=self._changed
        )
        self.links[peer.node_id] = link
        await link.start()
        if wait_up:
            await link.refresh_now()

    def _changed(self, link: PeerLink) -> None:
        body: dict[str, Any] = {"node_id": link.peer.node_id, "state": link.state}
        if link.error:
            body["error"] = link.error
        if link.up:
            self.mirror.attach(link)
        self.publish(PEERS_STATE, body)

    # -- handlers ---------------------------------------------------------------------------------------------
    async def node_info(self) -> dict[str, Any]:
        caller_local = _LOCAL_CALLER
        models: list[str] = []
        load = 0
        route = self.hub.route("llm.stats")
        if route is not None:
            with contextlib.suppress(BusError):
                stats = await route.handler(Call(new_id(), "llm.stats", {}, caller_local))
                models = [str(stats.get("model", ""))]
                load = int(stats.get("queue", 0)) + int(stats.get("active", 0))
        robots: list[str] = []
        robot_route = self.hub.route("robot.list")
        if robot_route is not None:
            with contextlib.suppress(BusError):
                listed = await robot_route.handler(Call(new_id(), "robot.list", {}, caller_local))
                robots = [str(r.get("id") or r.get("robot_id") or "") for r in listed.get("robots", [])]
        return {
            "node_id": self.node_id,
            "version": self.node.version,
            "key": self.keypair.public,
            "fingerprint": fingerprint(self.keypair.public),
            "endpoints": self._endpoints(),
            "caps": {
                "models": models,
                "free_memory": read_mem_available() or 0,
                "accelerators": _accelerators(),
                "robots": [r for r in robots if r],
                "load": load,
            },
        }

    @method("peers.info", access="device", schema=EMPTY_SCHEMA)
    async def handle_info(self, call: Call) -> dict[str, Any]:
        """This daemon as its peers see it: identity, endpoints and capabilities (models, memory, load)."""
        return await self.node_info()

    @method("peers.list", schema=EMPTY_SCHEMA)
    async def handle_list(self, call: Call) -> dict[str, Any]:
        """Paired peers with their link state and capabilities, and what discovery is doing."""
        peers = [self.links[p.node_id].to_dict() if p.node_id in self.links else p.to_dict() for p in self.store.all()]
        return {
            "node_id": self.node_id,
            "peers": peers,
            "forwarded": self.router.forwarded if self.router else 0,
            "discovery": {
                "announcing": self.announcer is not None,
                "interfaces": self.announcer.interfaces if self.announcer else [],
                "broadcast": [b.broadcast for b in self.beacons],
                "reason": self.discovery_reason,
            },
            "pairing": self._window_body() if self.window is not None and self.window.is_open else None,
        }

    @method("peers.discover", schema=DISCOVER_SCHEMA)
    async def handle_discover(self, call: Call) -> dict[str, Any]:
        """What is announced on our interfaces right now (mDNS for ``duration`` s, plus broadcast beacons)."""
        interfaces, reason = self._interfaces()
        if not interfaces:
            raise Unavailable(f"discovery is off on this daemon: {reason}")
        found = {r.node_id: r for r in await browse(interfaces, float(call.body.get("duration", 2.0)))}
        for b in self.beacons:
            for r in b.records.values():
                found.setdefault(r.node_id, r)
        found.pop(self.node_id, None)
        paired = {p.node_id for p in self.store.all()}
        return {"records": [{**r.to_dict(), "paired": r.node_id in paired} for r in found.values()]}

    def _me(self) -> Identity:
        eps = self._endpoints()
        return Identity(self.node_id, self.keypair.public, self.node_id, eps)

    def _window_body(self) -> dict[str, Any]:
        w = self.window
        assert w is not None
        return {
            "code": w.code,
            "endpoint": w.bound,
            "role": w.role,
            "expires": w.expires,
            "node_id": self.node_id,
            "fingerprint": fingerprint(self.keypair.public),
        }

    @method("peers.pair_open", access="admin", schema=PAIR_OPEN_SCHEMA)
    async def handle_pair_open(self, call: Call) -> dict[str, Any]:
        """Open a pairing window: returns the one-time code to type on the other device and where to send it."""
        if self.window is not None:
            await self.window.close()
        eps = self._endpoints()
        endpoint = self.opts["pair"] or f"tcp://{endpoint_host(eps.get('rpc', 'tcp://127.0.0.1:0'))}:0"
        self.window = PairingWindow(
            endpoint=endpoint,
            me=self._me(),
            role=call.body.get("role", "user"),
            on_paired=self._accepted,
            ttl=float(call.body.get("ttl", self.opts["pair_ttl"])),
        )
        await self.window.open()
        return self._window_body()

    async def _accepted(self, paired: Paired) -> None:
        if paired.peer.key == self.keypair.public or paired.peer.node_id == self.node_id:
            raise BadRequest("that pairing window is this daemon's own")
        # Not waiting for the link: the other side admits our key only once we have answered.
        await self._remember(paired.peer, role=paired.role, their_role="user" if paired.peer.endpoints else "")

    async def _remember(self, peer: Identity, *, role: str, their_role: str, wait_up: bool = False) -> PeerEntry:
        self.allow.load()
        self.allow.add(peer.key, role, f"peer:{peer.node_id}")
        self.allow.save()
        old = self.store.find(peer.node_id)
        if old is not None and old.node_id in self.links:
            await self.links.pop(old.node_id).close()
        entry = PeerEntry(peer.node_id, peer.key, peer.name, dict(peer.endpoints), role, their_role, time.time())
        self.store.put(entry)
        self.store.save()
        self.publish(
            PEERS_PAIRED,
            {"node_id": peer.node_id, "name": peer.name, "fingerprint": fingerprint(peer.key), "role": role},
        )
        await self._link(entry, wait_up=wait_up)
        return entry

    @method("peers.pair", access="admin", schema=PAIR_SCHEMA)
    async def handle_pair(self, call: Call) -> dict[str, Any]:
        """Pair with the daemon whose window is open at ``endpoint``, using the code it shows."""
        b = call.body
        paired = await pair_with(b["endpoint"], self._me(), b["code"], timeout=10.0)
        if paired.peer.node_id == self.node_id:
            raise BadRequest("that pairing window is this daemon's own")
        entry = await self._remember(paired.peer, role=b.get("role", "user"), their_role=paired.role, wait_up=True)
        link = self.links.get(entry.node_id)
        return {
            "peer": link.to_dict() if link is not None else entry.to_dict(),
            "fingerprint": fingerprint(entry.key),
        }

    @method("peers.unpair", access="admin", schema=UNPAIR_SCHEMA)
    async def handle_unpair(self, call: Call) -> dict[str, Any]:
        """Forget a peer: its key leaves the allow-list (new connections are refused) and its link closes."""
        peer = self.store.find(call.body["peer"])
        if peer is None:
            known = ", ".join(p.node_id for p in self.store.all()) or "none"
            raise NotFound(f"no paired peer {call.body['peer']!r} (paired: {known})")
        self.store.remove(peer.node_id)
        self.store.save()
        self.allow.load()
        self.allow.remove(peer.key)
        self.allow.save()
        await self.mirror.detach(peer.node_id)
        link = self.links.pop(peer.node_id, None)
        if link is not None:
            await link.close()
        self.publish(PEERS_UNPAIRED, {"node_id": peer.node_id})
        return {"unpaired": peer.node_id}
