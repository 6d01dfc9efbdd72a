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

This file is the wiring: the settings' schema, and the service (``daemon.modules.peers.service``) built from
them and the daemon's ``Node``/``NodeKeys`` services, served on load and closed on unload.
"""

from __future__ import annotations

from typing import Any, Final

from daemon.module import Module
from daemon.modules.peers.service import PeersService
from daemon.modules.peers.store import PeerStore
from daemon.services import Node, NodeKeys
from daemon.topics import SYS_STARTED

_IPV4_LIST: Final = {"type": "array", "items": {"type": "string", "format": "ipv4"}}
_SECONDS: Final = {"type": "number", "exclusiveMinimum": 0}
CONFIG_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "interfaces": _IPV4_LIST,  # unset: the address daemon.rpc binds, when it is one concrete address
        "announce": {"type": "boolean", "default": True},
        "broadcast": {**_IPV4_LIST, "default": []},
        "pair": {"type": "string", "default": ""},
        "pair_ttl": {**_SECONDS, "default": 120.0},
        "prefer": {"enum": ["local", "peers"], "default": "local"},
        "fallback_local": {"type": "boolean", "default": True},
        "mirror": {"type": "array", "items": {"type": "string"}, "default": []},
        "refresh": {**_SECONDS, "default": 5.0},
        "timeout": {**_SECONDS, "default": 60.0},
    },
    "additionalProperties": False,
}


class PeersModule(Module):
    name = "peers"
    description = "LAN: discovery (mDNS/broadcast), pairing, links to paired daemons, routing LLM work to them."
    config_schema = CONFIG_SCHEMA
    handlers = (PeersService,)
    requires = (Node, NodeKeys)

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.service: PeersService | None = None

    async def load(self) -> None:
        opts = {"interfaces": None, **self.ctx.config}
        store = PeerStore(self.ctx.data_dir / "peers.json")
        store.load()
        svc = self.service = PeersService(
            self.ctx.hub,
            self.ctx.services.get(Node),
            self.ctx.services.get(NodeKeys),
            store,
            opts,
            self.ctx.publish,
            self.ctx.log,
        )
        self.ctx.serve(svc)
        await svc.start()
        if not svc.discover_when_bound():  # loaded at daemon start: our endpoints are known once the server is up
            self.ctx.listen(SYS_STARTED, lambda _t, _b: svc.discover_when_bound())

    async def unload(self) -> None:
        if self.service is not None:
            await self.service.close()
            self.service = None
