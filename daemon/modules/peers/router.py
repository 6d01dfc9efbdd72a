"""Routing: ``llm.*`` and ``chat.*`` calls go to the daemon that has the model — here or a paired peer.

The router sits in front of those methods (``Hub.front``). For each call it picks a target:

- a call that came *from* a paired daemon is always served here (a forwarded call is never forwarded again);
- a request naming a ``model`` goes here when the local backend serves that model, else to the least loaded
  peer that is up and has it, else — when ``fallback_local`` is on — here anyway, else ``unavailable``;
- a request naming no model goes here when there is a local backend (unless ``prefer = "peers"``), else to
  the least loaded peer that is up and has any model; with neither, ``unavailable`` says so.

``chat.send``/``chat.regenerate`` always run here, so the session is stored on the daemon the client talks
to; the router pins its choice for the duration of that call (a context variable), and the chat module's
own ``llm.stats``/``llm.chat`` calls follow the pin. A forwarded stream passes chunks through as they come.
When the peer vanishes mid-stream the link fails the stream at once with ``unavailable``; the link is down
from then on, so the next request goes elsewhere (the fallback).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, Final

from bus.envelope import new_id
from bus.errors import Forbidden, Unavailable
from bus.service import Call, Result, role_allows
from daemon.hub import Hub
from daemon.modules.peers.link import PeerLink

LOCAL: Final = "local"
STREAMING: Final = frozenset({"llm.generate", "llm.chat"})
LLM_METHODS: Final = {"llm.generate": "user", "llm.chat": "user", "llm.stats": "device"}
CHAT_METHODS: Final = ("chat.send", "chat.regenerate")

Target = str | PeerLink
Local = Callable[[Call], Awaitable[Result]]

_pinned: contextvars.ContextVar[Target | None] = contextvars.ContextVar("enigma_peer_route", default=None)


class Router:
    def __init__(
        self,
        hub: Hub,
        links: Callable[[], list[PeerLink]],
        peer_keys: Callable[[], set[str]],
        *,
        prefer: str = "local",
        fallback_local: bool = True,
        timeout: float = 60.0,
    ) -> None:
        self.hub = hub
        self._links = links
        self._peer_keys = peer_keys
        self.prefer = prefer
        self.fallback_local = fallback_local
        self.timeout = timeout
        self.forwarded = 0

    def install(self) -> list[Callable[[], None]]:
        """Put the router in front of every routed method; returns the functions that take it away."""
        undo = [self.hub.front(m, self.front_llm) for m in LLM_METHODS]
        undo += [self.hub.front(m, self.front_chat) for m in CHAT_METHODS]
        return undo

    # -- choosing ---------------------------------------------------------------------------------------------
    async def local_model(self, caller: Any) -> str | None:
        """The model the local backend serves, or None without one (asks its ``llm.stats`` handler directly)."""
        route = self.hub.route("llm.stats")
        if route is None:
            return None
        body = await route.handler(Call(new_id(), "llm.stats", {}, caller))
        model = body.get("model")
        return model if isinstance(model, str) else ""

    async def choose(self, call: Call) -> Target:
        if call.caller.key is not None and call.caller.key in self._peer_keys():
            return LOCAL
        model = call.body.get("model")
        model = model if isinstance(model, str) and model else None
        # A local backend still loading counts: the call waits for it (Hub.expect) rather than leaving the host.
        has_local = self.hub.route("llm.chat") is not None or self.hub.expects("llm.chat")
        up = [link for link in self._links() if link.up and link.models()]
        if model is not None:
            if has_local and await self.local_model(call.caller) == model:
                return LOCAL
            having = [link for link in up if model in link.models()]
            if having:
                return min(having, key=lambda link: link.load)
            if has_local and self.fallback_local:
                return LOCAL
            where = ", ".join(sorted({m for link in up for m in link.models()})) or "none"
            raise Unavailable(
                f"no daemon that is up has the model {model!r}: not loaded here, and the paired peers that are "
                f"up have: {where}",
                {"model": model},
            )
        if has_local and (self.prefer == "local" or not up):
            return LOCAL
        if up:
            return min(up, key=lambda link: link.load)
        if has_local:
            return LOCAL
        raise Unavailable(
            "no LLM backend is loaded here and no paired peer that is up has one: load one with "
            "`enigma modules load llm`, or pair with a daemon that has a model (`enigma peers pair`)"
        )

    # -- fronts -----------------------------------------------------------------------------------------------
    async def front_llm(self, call: Call, local: Local) -> Result:
        target = _pinned.get() or await self.choose(call)
        if target == LOCAL:
            return await local(call)
        assert isinstance(target, PeerLink)
        access = LLM_METHODS.get(call.method, "user")
        if not role_allows(call.caller.role, access):
            raise Forbidden(f"role {call.caller.role!r} may not call {call.method!r} (needs {access!r})")
        return await self.forward(target, call)

    async def front_chat(self, call: Call, local: Local) -> Result:
        target = await self.choose(call)
        token = _pinned.set(target)
        try:
            return await local(call)
        finally:
            _pinned.reset(token)

    async def forward(self, link: PeerLink, call: Call) -> Result:
        """Run ``call`` on the peer, passing chunks through; the peer's errors come back as they are."""
        self.forwarded += 1
        body = {k: v for k, v in call.body.items() if k != "model"} if call.method == "llm.stats" else call.body
        if not link.up:
            raise Unavailable(f"peer {link.peer.node_id} is {link.state}: {link.error or 'not connected'}")
        if call.method not in STREAMING:
            return Result("reply", await link.client.call(call.method, body, timeout=self.timeout))
        async with link.client.stream(call.method, body, timeout=self.timeout) as s:
            async for chunk in s:
                await call.emit(chunk)
        end = dict(s.result or {})
        end["peer"] = link.peer.node_id
        return Result("end", end)
