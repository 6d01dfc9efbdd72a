"""The in-process hub: handlers by method name, events by topic.

Transports are adapters around it (see ``bus.service``). A component registers handlers with the access role
they need and an optional JSON-schema for the body; the hub checks both before the handler runs, so handlers
can trust the shape of what they get. Events fan out synchronously to listeners (which only enqueue), and the
last few events of every topic are kept for late joiners (``event.replay``).

A method can be *expected* (``Hub.expect``) while the module that declares it is still loading: the daemon
answers requests before its modules are up (the model alone can take a minute), so a call to such a method
waits for the module instead of being told ``unknown_method`` or reaching a handler whose backend is not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bus.errors import BadRequest, BusError, Forbidden, InternalError, UnknownMethod
from bus.service import Call, EventListener, Result, role_allows

log = logging.getLogger("enigma.hub")

UnaryHandler = Callable[[Call], Awaitable[dict[str, Any]]]
# A front runs in place of a method's handler and decides where the call goes: it may forward it (to a peer
# daemon) or hand it to ``local`` — the normal dispatch — itself. See ``Hub.front``.
Front = Callable[[Call, Callable[[Call], Awaitable[Result]]], Awaitable[Result]]
# A streaming handler sends chunks with ``await call.emit(body)`` and returns the ``end`` body.
StreamHandler = Callable[[Call], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class Route:
    method: str
    handler: UnaryHandler | StreamHandler
    stream: bool
    access: str
    validator: Any  # a jsonschema validator or None
    summary: str


@dataclass(slots=True)
class StoredEvent:
    topic: str
    body: dict[str, Any]
    ts: float
    seq: int


class Hub:
    """Routes calls to handlers and events to listeners. Lives on the daemon's event loop."""

    def __init__(self, replay_per_topic: int = 50, max_topics: int = 1024) -> None:
        self._routes: dict[str, Route] = {}
        self._fronts: dict[str, Front] = {}
        self._expected: dict[str, Callable[[], Awaitable[None]]] = {}
        self._listeners: list[tuple[str, EventListener]] = []
        self._replay: OrderedDict[str, deque[StoredEvent]] = OrderedDict()
        self._replay_per_topic = replay_per_topic
        self._max_topics = max_topics
        self._event_seq = 0

    # -- handlers -------------------------------------------------------------------------------------------
    def register(
        self,
        method: str,
        handler: UnaryHandler | StreamHandler,
        *,
        stream: bool = False,
        access: str = "user",
        schema: dict[str, Any] | None = None,
        summary: str = "",
    ) -> Callable[[], None]:
        """Register ``handler`` for ``method``; returns a function that unregisters it."""
        if method in self._routes:
            raise ValueError(f"method {method!r} is already registered")
        validator = None
        if schema is not None:
            import jsonschema

            jsonschema.Draft202012Validator.check_schema(schema)
            validator = jsonschema.Draft202012Validator(schema)
        route = Route(method, handler, stream, access, validator, summary or (handler.__doc__ or "").strip())
        self._routes[method] = route

        def unregister() -> None:
            if self._routes.get(method) is route:
                del self._routes[method]

        return unregister

    def front(self, method: str, front: Front) -> Callable[[], None]:
        """Put ``front(call, local)`` in front of ``method``, whether or not a handler is registered for it.

        How work goes where the model is (``daemon.modules.peers``): the front forwards the call or passes it to
        ``local``, which is the ordinary dispatch (unknown method, role and schema checks, the handler). One
        front per method; returns a function that removes it.
        """
        if method in self._fronts:
            raise ValueError(f"method {method!r} already has a front")
        self._fronts[method] = front

        def remove() -> None:
            if self._fronts.get(method) is front:
                del self._fronts[method]

        return remove

    def expect(self, method: str, wait: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Until the returned function is called, a call to ``method`` first awaits ``wait()``, then dispatches.

        The module manager expects the methods a module declares while that module is queued or loading:
        ``wait()`` returns once the module is active and raises the bus error a caller should get otherwise
        (the load failed, or it took longer than the caller may wait). Checked before the route, because a
        module may register its handlers early in ``load()`` and only then bring its backend up.
        """
        if method in self._expected:
            raise ValueError(f"method {method!r} is already expected")
        self._expected[method] = wait

        def done() -> None:
            if self._expected.get(method) is wait:
                del self._expected[method]

        return done

    def expects(self, method: str) -> bool:
        """True while a module that declares ``method`` is being loaded (see ``expect``)."""
        return method in self._expected

    def serves(self, method: str) -> bool:
        """True when a call to ``method`` can be answered: a handler is registered, a front takes it, or the
        module that declares it is loading (the call then waits for it)."""
        return method in self._routes or method in self._fronts or method in self._expected

    def methods(self) -> list[Route]:
        return sorted(self._routes.values(), key=lambda r: r.method)

    def route(self, method: str) -> Route | None:
        return self._routes.get(method)

    async def dispatch(self, call: Call) -> Result:
        front = self._fronts.get(call.method)
        if front is not None:
            return await front(call, self._dispatch_local)
        return await self._dispatch_local(call)

    async def _dispatch_local(self, call: Call) -> Result:
        wait = self._expected.get(call.method)
        if wait is not None:
            await wait()
        route = self._routes.get(call.method)
        if route is None:
            raise UnknownMethod(f"unknown method {call.method!r}")
        if not role_allows(call.caller.role, route.access):
            raise Forbidden(f"role {call.caller.role!r} may not call {call.method!r} (needs {route.access!r})")
        if route.validator is not None:
            err = next(iter(route.validator.iter_errors(call.body)), None)
            if err is not None:
                where = "/".join(str(p) for p in err.absolute_path) or "body"
                raise BadRequest(f"{call.method}: {where}: {err.message}", {"field": where})
        try:
            body = await route.handler(call)
        except (BusError, asyncio.CancelledError):
            raise
        except Exception as exc:
            log.exception("handler for %s failed", call.method)
            raise InternalError(f"{call.method} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict):
            raise InternalError(f"{call.method} returned {type(body).__name__}, not a map")
        return Result("end" if route.stream else "reply", body)

    # -- events ---------------------------------------------------------------------------------------------
    def add_listener(self, prefix: str, listener: EventListener) -> Callable[[], None]:
        entry = (prefix, listener)
        self._listeners.append(entry)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(entry)

        return remove

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        """Publish an event to every listener whose prefix matches and keep it for replay.

        A listener that raises is logged with its topic and never stops the others.
        """
        self._event_seq += 1
        ev = StoredEvent(topic, body, time.time(), self._event_seq)
        ring = self._replay.get(topic)
        if ring is None:
            ring = self._replay[topic] = deque(maxlen=self._replay_per_topic)
            while len(self._replay) > self._max_topics:
                self._replay.popitem(last=False)
        else:
            self._replay.move_to_end(topic)
        ring.append(ev)
        for prefix, listener in tuple(self._listeners):
            if topic.startswith(prefix):
                try:
                    listener(topic, body)
                except Exception:
                    log.exception("event listener failed for topic %s", topic)

    def replay(self, prefix: str, limit: int) -> list[StoredEvent]:
        """The last ``limit`` events whose topic starts with ``prefix``, oldest first."""
        events = [ev for topic, ring in self._replay.items() if topic.startswith(prefix) for ev in ring]
        events.sort(key=lambda e: e.seq)
        return events[-limit:] if limit > 0 else []
