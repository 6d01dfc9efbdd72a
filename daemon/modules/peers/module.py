"""``peers``: many daemons on one LAN — discovery, pairing, links to paired daemons, routing and mirroring.

``[modules.peers]`` options:

- ``interfaces`` — IPv4 addresses to announce and browse on (default: the address ``daemon.rpc`` binds, when
  it is one concrete non-loopback address). A daemon whose endpoints are loopback only announces nothing.
- ``announce`` (true) — announce ``_enigma._tcp`` over mDNS on those interfaces.
- ``broadcast`` ([]) — IPv4 broadcast addresses for the UDP fallback (one per interface, same order).
- ``pair`` — where a pairing window listens (default: the rpc host, a free port).
- ``pair_ttl`` (120) — seconds a pairing window stays open.
- ``prefer`` (``"local"``) — with no model named, serve here when a backend is loaded; ``"peers"`` sends such
  requests to the least loaded peer first.
- ``fallback_local`` (true) — when no peer that is up has the model asked for, serve here with the local one.
- ``mirror`` ([]) — topic prefixes whose events from paired daemons are re-published here.
- ``refresh`` (5) — seconds between capability refreshes of each link; ``timeout`` (60) — longest wait for
  the next chunk of a forwarded stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

from bus.auth import AllowList, KeyPair, endpoint_host, fingerprint, is_loopback
from bus.discovery import Announcer, BroadcastBeacon, Record, browse
from bus.envelope import new_id
from bus.errors import BadRequest, BusError, NotFound, Unavailable
from bus.pairing import Identity, Paired, PairingWindow, pair_with
from bus.service import ROLES, Call, Caller
from daemon.module import Module
from daemon.modules.peers.link import PeerLink
from daemon.modules.peers.mirror import Mirror
from daemon.modules.peers.router import Router
from daemon.modules.peers.store import PeerEntry, PeerStore
from daemon.topics import SYS_STARTED

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


class PeersModule(Module):
    name = "peers"
    description = "LAN: discovery (mDNS/broadcast), pairing, links to paired daemons, routing LLM work to them."
    provides = (
        "peers.info",
        "peers.list",
        "peers.discover",
        "peers.pair_open",
        "peers.pair",
        "peers.unpair",
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.store = PeerStore(ctx.data_dir / "peers.json")
        self.links: dict[str, PeerLink] = {}
        self.window: PairingWindow | None = None
        self.announcer: Announcer | None = None
        self.beacons: list[BroadcastBeacon] = []
        self.discovery_reason = "not started"
        self._undo_fronts: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.router: Router | None = None
        self.mirror: Mirror | None = None
        self.keypair: KeyPair | None = None
        self.allow: AllowList | None = None

    # -- config -----------------------------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        cfg = dict(self.ctx.config)
        out: dict[str, Any] = {
            "interfaces": cfg.pop("interfaces", None),
            "announce": cfg.pop("announce", True),
            "broadcast": cfg.pop("broadcast", []),
            "pair": cfg.pop("pair", ""),
            "pair_ttl": cfg.pop("pair_ttl", 120.0),
            "prefer": cfg.pop("prefer", "local"),
            "fallback_local": cfg.pop("fallback_local", True),
            "mirror": cfg.pop("mirror", []),
            "refresh": cfg.pop("refresh", 5.0),
            "timeout": cfg.pop("timeout", 60.0),
        }
        if cfg:
            raise ValueError(f"modules.peers: unknown option(s) {', '.join(sorted(cfg))}")
        for key in ("interfaces", "broadcast", "mirror"):
            value = out[key]
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"modules.peers.{key} must be a list of strings, got {value!r}")
        for key in ("interfaces", "broadcast"):
            bad = [v for v in out[key] or [] if not _is_ipv4(v)]
            if bad:
                raise ValueError(f"modules.peers.{key}: {bad[0]!r} is not an IPv4 address")
        if out["prefer"] not in ("local", "peers"):
            raise ValueError(f"modules.peers.prefer must be 'local' or 'peers', got {out['prefer']!r}")
        for key in ("announce", "fallback_local"):
            if not isinstance(out[key], bool):
                raise ValueError(f"modules.peers.{key} must be true or false, got {out[key]!r}")
        for key in ("pair_ttl", "refresh", "timeout"):
            v = out[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise ValueError(f"modules.peers.{key} must be a positive number, got {v!r}")
        if not isinstance(out["pair"], str):
            raise ValueError(f"modules.peers.pair must be an endpoint string, got {out['pair']!r}")
        return out

    def _keys(self) -> tuple[KeyPair, AllowList]:
        """The daemon's own CURVE pair and the allow-list its server admits by (shared with ``enigmad keys``)."""
        from daemon.app import server_auth

        core = self.ctx.services.get("core")
        daemon = getattr(core, "daemon", None)
        if daemon is not None and daemon.auth is not None:
            return daemon.auth.keypair, daemon.auth.allow
        if daemon is None:
            raise ValueError("the peers module needs a running daemon (its key pair and allow-list)")
        auth = server_auth(daemon.config)
        return auth.keypair, auth.allow

    def _endpoints(self) -> dict[str, str]:
        server = getattr(self.ctx.services.get("core"), "server", None)
        return dict(server.endpoints) if server is not None else {}

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def load(self) -> None:
        self.opts = opts = self._options()
        self.keypair, self.allow = self._keys()
        self.store.load()
        self.router = Router(
            self.ctx.hub,
            lambda: list(self.links.values()),
            self.store.keys,
            prefer=opts["prefer"],
            fallback_local=opts["fallback_local"],
            timeout=opts["timeout"],
        )
        self.mirror = Mirror(opts["mirror"], self.ctx.publish)
        reg = self.ctx.register
        reg("peers.info", self.handle_info, access="device", schema=EMPTY_SCHEMA)
        reg("peers.list", self.handle_list, schema=EMPTY_SCHEMA)
        reg("peers.discover", self.handle_discover, schema=DISCOVER_SCHEMA)
        reg("peers.pair_open", self.handle_pair_open, access="admin", schema=PAIR_OPEN_SCHEMA)
        reg("peers.pair", self.handle_pair, access="admin", schema=PAIR_SCHEMA)
        reg("peers.unpair", self.handle_unpair, access="admin", schema=UNPAIR_SCHEMA)
        for peer in self.store.all():
            await self._link(peer)
        self._undo_fronts = self.router.install()  # last: a failed load must leave no front behind
        if self._endpoints():
            self._spawn(self._start_discovery())
        else:  # loaded at daemon start: our endpoints are known once the server is up
            self.ctx.listen(SYS_STARTED, lambda _t, _b: self._spawn(self._start_discovery()))

    async def unload(self) -> None:
        for undo in self._undo_fronts:
            undo()
        self._undo_fronts = []
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.window is not None:
            await self.window.close()
        if self.mirror is not None:
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
            node_id=self.ctx.node_id,
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
            self.ctx.log.info("discovery: announcing nothing (%s)", reason)
            return
        rec = await self.record()
        if self.opts["announce"]:
            ann = Announcer(rec, interfaces, _port(rec.rpc))
            try:
                await ann.start()
                self.announcer = ann
            except BusError as exc:
                self.ctx.log.error("discovery: %s", exc.message)
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
        assert self.keypair is not None
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
        if link.up and self.mirror is not None:
            self.mirror.attach(link)
        self.ctx.publish(PEERS_STATE, body)

    # -- handlers ---------------------------------------------------------------------------------------------
    async def node_info(self) -> dict[str, Any]:
        from daemon.app import version
        from daemon.manager import read_mem_available

        assert self.keypair is not None
        assert self.router is not None
        caller_local = _LOCAL_CALLER
        models: list[str] = []
        load = 0
        route = self.ctx.hub.route("llm.stats")
        if route is not None:
            with contextlib.suppress(BusError):
                stats = await route.handler(Call(new_id(), "llm.stats", {}, caller_local))
                models = [str(stats.get("model", ""))]
                load = int(stats.get("queue", 0)) + int(stats.get("active", 0))
        robots: list[str] = []
        robot_route = self.ctx.hub.route("robot.list")
        if robot_route is not None:
            with contextlib.suppress(BusError):
                listed = await robot_route.handler(Call(new_id(), "robot.list", {}, caller_local))
                robots = [str(r.get("id") or r.get("robot_id") or "") for r in listed.get("robots", [])]
        return {
            "node_id": self.ctx.node_id,
            "version": version(),
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

    async def handle_info(self, call: Call) -> dict[str, Any]:
        """This daemon as its peers see it: identity, endpoints and capabilities (models, memory, load)."""
        return await self.node_info()

    async def handle_list(self, call: Call) -> dict[str, Any]:
        """Paired peers with their link state and capabilities, and what discovery is doing."""
        peers = [self.links[p.node_id].to_dict() if p.node_id in self.links else p.to_dict() for p in self.store.all()]
        return {
            "node_id": self.ctx.node_id,
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

    async def handle_discover(self, call: Call) -> dict[str, Any]:
        """What is announced on our interfaces right now (mDNS for ``duration`` s, plus broadcast beacons)."""
        interfaces, reason = self._interfaces()
        if not interfaces:
            raise Unavailable(f"discovery is off on this daemon: {reason}")
        found = {r.node_id: r for r in await browse(interfaces, float(call.body.get("duration", 2.0)))}
        for b in self.beacons:
            for r in b.records.values():
                found.setdefault(r.node_id, r)
        found.pop(self.ctx.node_id, None)
        paired = {p.node_id for p in self.store.all()}
        return {"records": [{**r.to_dict(), "paired": r.node_id in paired} for r in found.values()]}

    def _me(self) -> Identity:
        assert self.keypair is not None
        eps = self._endpoints()
        return Identity(self.ctx.node_id, self.keypair.public, self.ctx.node_id, eps)

    def _window_body(self) -> dict[str, Any]:
        w = self.window
        assert w is not None
        assert self.keypair is not None
        return {
            "code": w.code,
            "endpoint": w.bound,
            "role": w.role,
            "expires": w.expires,
            "node_id": self.ctx.node_id,
            "fingerprint": fingerprint(self.keypair.public),
        }

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
        assert self.keypair is not None
        if paired.peer.key == self.keypair.public or paired.peer.node_id == self.ctx.node_id:
            raise BadRequest("that pairing window is this daemon's own")
        # Not waiting for the link: the other side admits our key only once we have answered.
        await self._remember(paired.peer, role=paired.role, their_role="user" if paired.peer.endpoints else "")

    async def _remember(self, peer: Identity, *, role: str, their_role: str, wait_up: bool = False) -> PeerEntry:
        assert self.allow is not None
        self.allow.load()
        self.allow.add(peer.key, role, f"peer:{peer.node_id}")
        self.allow.save()
        old = self.store.find(peer.node_id)
        if old is not None and old.node_id in self.links:
            await self.links.pop(old.node_id).close()
        entry = PeerEntry(peer.node_id, peer.key, peer.name, dict(peer.endpoints), role, their_role, time.time())
        self.store.put(entry)
        self.store.save()
        self.ctx.publish(
            PEERS_PAIRED,
            {"node_id": peer.node_id, "name": peer.name, "fingerprint": fingerprint(peer.key), "role": role},
        )
        await self._link(entry, wait_up=wait_up)
        return entry

    async def handle_pair(self, call: Call) -> dict[str, Any]:
        """Pair with the daemon whose window is open at ``endpoint``, using the code it shows."""
        b = call.body
        paired = await pair_with(b["endpoint"], self._me(), b["code"], timeout=10.0)
        if paired.peer.node_id == self.ctx.node_id:
            raise BadRequest("that pairing window is this daemon's own")
        entry = await self._remember(paired.peer, role=b.get("role", "user"), their_role=paired.role, wait_up=True)
        link = self.links.get(entry.node_id)
        return {
            "peer": link.to_dict() if link is not None else entry.to_dict(),
            "fingerprint": fingerprint(entry.key),
        }

    async def handle_unpair(self, call: Call) -> dict[str, Any]:
        """Forget a peer: its key leaves the allow-list (new connections are refused) and its link closes."""
        assert self.allow is not None
        peer = self.store.find(call.body["peer"])
        if peer is None:
            known = ", ".join(p.node_id for p in self.store.all()) or "none"
            raise NotFound(f"no paired peer {call.body['peer']!r} (paired: {known})")
        self.store.remove(peer.node_id)
        self.store.save()
        self.allow.load()
        self.allow.remove(peer.key)
        self.allow.save()
        if self.mirror is not None:
            await self.mirror.detach(peer.node_id)
        link = self.links.pop(peer.node_id, None)
        if link is not None:
            await link.close()
        self.ctx.publish(PEERS_UNPAIRED, {"node_id": peer.node_id})
        return {"unpaired": peer.node_id}
