"""The module manager: the state machine every toggleable module goes through, and the rules between them.

UNLOADED → LOADING → LOADED → ACTIVE → UNLOADING → UNLOADED; a failure at any step ends in FAILED with the
error (and the module's partial registrations undone). LOADED means ``load()`` returned; the manager then
checks that every method the module declared in ``provides`` is really registered before calling it ACTIVE.

Before loading, the manager checks the module's ``[modules.<name>]`` table against its ``config_schema`` (a
bad value fails the module with the key and where it was set, ``daemon.settings``) and refuses what would break
the daemon: an unknown name (``not_found``), a service it requires that nothing offers (``unavailable``), a
declared conflict or a second module for the same ``slot`` (``conflict``, naming the loaded module in the way), a
missing dependency (``not_found``; a known one is loaded first), more memory than the machine has available
(``unavailable``, with both figures). Unloading a module others depend on is a ``conflict`` naming them.

Every transition is published as ``module.state``. What the user asked for is persisted as a *wish*, so
modules they loaded come back at the next start and modules they unloaded stay off, even if autoloaded.
Operations on one module are serialised by a per-module lock.

The daemon answers requests while its modules load (``restore`` runs in the background; the model can take a
minute), so a module that is queued or loading has its declared methods *expected* on the hub: a call to one
waits (``wait_active``) until the module is active, for at most ``[modules.<name>] load_wait`` seconds, and
then runs — or gets ``unavailable`` naming the load error, or ``timeout`` saying how long it has been loading.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import importlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bus.errors import BusError, Conflict, NotFound, Timeout, Unavailable
from daemon.hub import Hub
from daemon.module import Module, ModuleContext, ModuleState
from daemon.settings import SettingsError
from daemon.store import Store
from daemon.topics import MODULE_STATE

log = logging.getLogger("enigma.manager")

_ON = (ModuleState.LOADING, ModuleState.LOADED, ModuleState.ACTIVE)
# Seconds a call waits for the module that serves it to finish loading. A cold start of the default model took
# 50-139 s on a 2-core machine (most of it compiling the decode step), so two minutes covers a normal start
# without leaving a caller hanging on a load that is stuck.
DEFAULT_LOAD_WAIT = 120.0


def read_mem_available(path: str = "/proc/meminfo") -> int | None:
    """Bytes the kernel says can be allocated without swapping (``MemAvailable``), or None where unknown."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass
class _Entry:
    name: str
    spec: str  # "package.module:ClassName"
    cls: type[Module] | None = None
    import_error: str | None = None
    state: ModuleState = ModuleState.UNLOADED
    error: str | None = None
    instance: Module | None = None
    ctx: ModuleContext | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # While queued or loading: the hub expectations of its declared methods (undo functions), when it was queued
    # and when its load() began (monotonic), and why a queued load did not happen (a dependency failed …).
    unexpect: builtins.list[Callable[[], None]] = field(default_factory=builtins.list)
    queued_at: float | None = None
    since: float | None = None
    outcome: str | None = None
    # Set, then replaced, at every transition: what ``wait_active`` sleeps on; how many calls sleep on it.
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0


class ModuleManager:
    """Owns every module's lifecycle. ``registry`` maps names to ``"module.path:ClassName"`` import strings;
    ``ctx_factory(name)`` builds the ``ModuleContext`` a module gets (its config section, data dir, …)."""

    def __init__(
        self,
        hub: Hub,
        store: Store,
        registry: dict[str, str],
        ctx_factory: Callable[[str], ModuleContext],
        *,
        mem_available: Callable[[], int | None] = read_mem_available,
        load_wait: Callable[[str], float] = lambda _name: DEFAULT_LOAD_WAIT,
    ) -> None:
        self._hub = hub
        self._store = store
        self._ctx_factory = ctx_factory
        self._mem_available = mem_available
        self._load_wait = load_wait
        self._entries = {name: _Entry(name, spec) for name, spec in registry.items()}

    def use_store(self, store: Store) -> None:
        """Keep wishes in ``store`` from now on: a live restore (``backup.restore``) reopened the database."""
        self._store = store

    # -- queries ------------------------------------------------------------------------------------------
    def names(self) -> builtins.list[str]:
        return sorted(self._entries)

    def state(self, name: str) -> ModuleState:
        return self._entry(name).state

    def states(self) -> builtins.list[dict[str, str]]:
        """``[{"name", "state"}]`` for every known module, cheaply (no imports, no estimates)."""
        return [{"name": n, "state": str(self._entries[n].state)} for n in sorted(self._entries)]

    def loading(self) -> builtins.list[dict[str, Any]]:
        """The modules a start (or a ``module.load``) is still bringing up: ``[{"name", "state", "for",
        "waiting", "stage"?}]``, ``state`` being ``queued`` (not begun: waiting for its turn or a dependency),
        ``loading`` or ``loaded``; ``for`` in seconds since it was queued; ``waiting`` the calls held until it
        is active; ``stage`` what its ``load()`` is doing now."""
        now = time.monotonic()
        out = []
        for name in sorted(self._entries):
            e = self._entries[name]
            if not self._pending(e):
                continue
            started = e.queued_at if e.queued_at is not None else e.since
            item: dict[str, Any] = {
                "name": name,
                "state": str(e.state) if e.state in _ON else "queued",
                "for": round(now - started, 1) if started is not None else 0.0,
                "waiting": e.waiting,
            }
            stage = self._stage(e)
            if stage:
                item["stage"] = stage
            out.append(item)
        return out

    @staticmethod
    def _pending(e: _Entry) -> bool:
        return bool(e.unexpect) or e.state in (ModuleState.LOADING, ModuleState.LOADED)

    @staticmethod
    def _stage(e: _Entry) -> str:
        if e.instance is None or e.state is not ModuleState.LOADING:
            return ""
        try:
            return str(e.instance.progress())
        except Exception:
            log.exception("progress() of module %s failed", e.name)
            return ""

    def list(self) -> builtins.list[dict[str, Any]]:
        """One map per known module: what it declares, its state, and its error when it failed."""
        out = []
        for name in sorted(self._entries):
            e = self._entries[name]
            cls = self._resolve_quietly(e)
            item: dict[str, Any] = {
                "name": name,
                "description": cls.description if cls else "",
                "state": str(e.state),
                "depends": list(cls.depends) if cls else [],
                "conflicts": list(cls.conflicts) if cls else [],
                "slot": cls.slot if cls else None,
                "provides": list(cls.provides) if cls else [],
                "memory_estimate": self._estimate(e, cls),
                "error": e.error or e.import_error,
            }
            if e.instance is not None and e.state is ModuleState.ACTIVE:
                try:
                    item["info"] = e.instance.info()
                except Exception as exc:
                    log.exception("info() of module %s failed", name)
                    item["info"] = {"error": f"{type(exc).__name__}: {exc}"}
            out.append(item)
        return out

    def _estimate(self, e: _Entry, cls: type[Module] | None) -> int | None:
        """The loaded instance's estimate, or a throwaway instance's (constructing a module is cheap by contract)."""
        if e.instance is not None:
            return self._safe_estimate(e.instance)
        if cls is None:
            return None
        try:
            ctx = self._ctx_factory(e.name)
            with contextlib.suppress(SettingsError):  # a bad table is reported when the module loads
                ctx.config = cls.check_config(ctx.config)
            return self._safe_estimate(cls(ctx))
        except Exception:
            log.exception("constructing module %s for its estimate failed", e.name)
            return None

    @staticmethod
    def _safe_estimate(module: Module) -> int | None:
        try:
            return int(module.memory_estimate())
        except Exception:
            log.exception("memory_estimate() of module %s failed", module.name)
            return None

    # -- load ---------------------------------------------------------------------------------------------
    async def load(self, name: str, *, persist: bool = True) -> builtins.list[str]:
        """Load ``name`` (and, first, any dependency that is not yet active); returns the modules it loaded.

        ``persist`` records the user's wish so the module comes back after a restart.
        """
        loaded: builtins.list[str] = []
        await self._load(name, (), loaded)
        if persist:
            await self._store.set_wish(name, True)
        return loaded

    async def _load(self, name: str, chain: tuple[str, ...], loaded: builtins.list[str]) -> None:
        if name in chain:
            raise Conflict(f"dependency cycle: {' -> '.join((*chain, name))}")
        e = self._entry(name)
        async with e.lock:
            if e.state is ModuleState.ACTIVE:
                return
            cls = self._resolve(e)
            self._check_conflicts(e, cls)
            for dep in cls.depends:
                if dep not in self._entries:
                    raise NotFound(
                        f"module {name!r} depends on {dep!r}, which is not available (known: {', '.join(self.names())})"
                    )
                if self._entries[dep].state is not ModuleState.ACTIVE:
                    try:
                        await self._load(dep, (*chain, name), loaded)
                    except BusError as exc:
                        msg = f"cannot load {name!r}: its dependency {dep!r}: {exc.message}"
                        raise type(exc)(msg, exc.details) from exc
            # Checked again: the awaits above may have let a conflicting module in.
            self._check_conflicts(e, cls)
            ctx = self._ctx_factory(name)
            missing = ctx.services.missing(cls.requires)
            if missing:
                raise Unavailable(
                    f"module {name!r} needs the {', '.join(missing)} service, which nothing offers",
                    {"missing": missing},
                )
            try:
                ctx.config = cls.check_config(ctx.config, ctx.origin)
            except SettingsError as exc:
                log.error("module %s not loaded: %s", name, exc.message)
                await self._fail(e, exc.message)
                raise Unavailable(f"module {name!r} failed to load: {exc.message}", {"cause": "bad_request"}) from exc
            try:
                module = cls(ctx)
            except Exception as exc:
                raise Unavailable(f"module {name!r} cannot be set up: {type(exc).__name__}: {exc}") from exc
            self._check_memory(name, module)
            e.instance, e.ctx, e.error = module, ctx, None
            e.since = time.monotonic()
            self._expect(e)  # calls to its methods wait from here on, even once load() has registered them
            self._set(e, ModuleState.LOADING)
            try:
                try:
                    await module.load()
                    self._set(e, ModuleState.LOADED)
                    missing = [m for m in cls.provides if self._hub.route(m) is None]
                    if missing:
                        raise Unavailable(f"module {name!r} declares {', '.join(missing)} but did not register it")
                except asyncio.CancelledError:
                    await self._fail(e, "load cancelled")
                    raise
                except Exception as exc:
                    message = exc.message if isinstance(exc, BusError) else f"{type(exc).__name__}: {exc}"
                    log.error("module %s failed to load: %s", name, message, exc_info=not isinstance(exc, BusError))
                    await self._fail(e, message)
                    cause = str(exc.code) if isinstance(exc, BusError) else type(exc).__name__
                    raise Unavailable(f"module {name!r} failed to load: {message}", {"cause": cause}) from exc
                self._set(e, ModuleState.ACTIVE)
            finally:
                self._unexpect(e)
            loaded.append(name)
            log.info("module %s active", name, extra={"kv": {"load_s": round(time.monotonic() - e.since, 1)}})

    def _check_conflicts(self, e: _Entry, cls: type[Module]) -> None:
        for other in self._entries.values():
            if other is e or other.state not in _ON or other.cls is None:
                continue
            if other.name in cls.conflicts or e.name in other.cls.conflicts:
                raise Conflict(
                    f"module {e.name!r} conflicts with loaded module {other.name!r}; unload {other.name!r} first",
                    {"blocking": other.name},
                )
            if cls.slot is not None and cls.slot == other.cls.slot:
                raise Conflict(
                    f"module {e.name!r} and loaded module {other.name!r} both fill slot {cls.slot!r}; "
                    f"unload {other.name!r} first",
                    {"blocking": other.name, "slot": cls.slot},
                )

    def _check_memory(self, name: str, module: Module) -> None:
        needed = self._safe_estimate(module) or 0
        if needed <= 0:
            return
        available = self._mem_available()
        if available is None:
            return
        # Modules load side by side at start: what the others still loading will take is not gone from
        # MemAvailable yet, so it is set aside here, or two big modules would each see the whole machine.
        others = [
            o.instance
            for o in self._entries.values()
            if o.name != name and o.state is ModuleState.LOADING and o.instance is not None
        ]
        reserved = sum(self._safe_estimate(m) or 0 for m in others)
        if needed > available - reserved:
            also = f" ({human_bytes(reserved)} of it set aside for modules still loading)" if reserved else ""
            raise Unavailable(
                f"module {name!r} needs about {human_bytes(needed)} of memory but only {human_bytes(available)} "
                f"is available{also}",
                {"needed": needed, "available": available, "reserved": reserved},
            )

    async def _fail(self, e: _Entry, message: str) -> None:
        if e.ctx is not None:
            e.ctx.undo_all()
        if e.instance is not None:
            try:
                await e.instance.unload()
            except Exception:
                log.exception("unload() after a failed load of %s raised", e.name)
        e.instance = e.ctx = None
        e.error = message
        self._set(e, ModuleState.FAILED)

    # -- unload -------------------------------------------------------------------------------------------
    async def unload(self, name: str, *, persist: bool = True) -> None:
        """Unload ``name``; refuses while loaded modules depend on it. ``persist`` keeps it off after restarts."""
        e = self._entry(name)
        async with e.lock:
            if e.state in _ON:
                dependents = self._dependents(name)
                if dependents:
                    raise Conflict(
                        f"cannot unload {name!r}: loaded modules depend on it: {', '.join(dependents)}; "
                        "unload them first",
                        {"dependents": dependents},
                    )
                await self._unload(e)
            elif e.state is ModuleState.FAILED:
                e.error = None
                self._set(e, ModuleState.UNLOADED)
        if persist:
            await self._store.set_wish(name, False)

    def _dependents(self, name: str) -> builtins.list[str]:
        return sorted(
            o.name for o in self._entries.values() if o.state in _ON and o.cls is not None and name in o.cls.depends
        )

    async def _unload(self, e: _Entry) -> None:
        self._set(e, ModuleState.UNLOADING)
        error = None
        try:
            if e.instance is not None:
                await e.instance.unload()
        except Exception as exc:
            error = f"unload failed: {type(exc).__name__}: {exc}"
            log.exception("module %s failed to unload", e.name)
        finally:
            if e.ctx is not None:
                e.ctx.undo_all()
            e.instance = e.ctx = None
        e.error = error
        self._set(e, ModuleState.FAILED if error else ModuleState.UNLOADED)
        log.info("module %s %s", e.name, "failed to unload" if error else "unloaded")

    # -- start and stop -----------------------------------------------------------------------------------
    async def plan(self, autoload: Iterable[str] = ()) -> builtins.list[str]:
        """What should be on at start: the autoload list minus what the user switched off, plus what the user
        loaded last time. Their declared methods are expected from now on (calls wait rather than fail), so
        the daemon may start serving before ``restore`` has loaded them."""
        wishes = await self._store.wishes()
        wanted = [n for n in autoload if wishes.get(n, True)]
        wanted += [n for n, on in wishes.items() if on and n not in wanted]
        planned = []
        for name in wanted:
            e = self._entries.get(name)
            if e is None:
                log.warning("not loading %s: no such module in this enigmad", name)
                continue
            if e.state is not ModuleState.ACTIVE:
                e.queued_at = time.monotonic()
                self._expect(e)
            planned.append(name)
        return planned

    async def restore(self, autoload: Iterable[str] = (), *, planned: Iterable[str] | None = None) -> None:
        """Load what ``plan(autoload)`` chose (or ``planned``, its result), side by side: a light module must not
        wait a minute behind the model. Failures are logged and leave the module FAILED; the daemon runs anyway.
        Cancelling it cancels the loads (each ends FAILED with "load cancelled")."""
        names = list(planned) if planned is not None else await self.plan(autoload)
        await asyncio.gather(*(self._restore_one(name) for name in names))

    async def _restore_one(self, name: str) -> None:
        e = self._entry(name)
        outcome = None
        try:
            await self.load(name, persist=False)
        except BusError as exc:
            outcome = exc.message
            log.error("could not load %s at start: %s", name, exc.message)
        except Exception as exc:  # a bug in one module's wiring must not stop the others from loading
            outcome = f"{type(exc).__name__}: {exc}"
            log.exception("could not load %s at start", name)
        finally:
            e.queued_at = None
            self._unexpect(e, outcome)

    # -- waiting for a module -----------------------------------------------------------------------------
    async def wait_active(self, name: str, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once ``name`` is active; what a call to one of its methods awaits while it loads.

        Raises ``unavailable`` when the load failed (with its error) or the module is not being loaded, and
        ``timeout`` after ``timeout`` seconds (default: ``[modules.<name>] load_wait``) with how long it has
        been loading and what it is doing.
        """
        e = self._entry(name)
        limit = self._load_wait(name) if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            if e.state is ModuleState.ACTIVE:
                return
            if e.state is ModuleState.FAILED:
                raise Unavailable(
                    f"module {name!r} failed to load: {e.error}", {"module": name, "state": "failed", "error": e.error}
                )
            if not self._pending(e):
                why = f": {e.outcome}" if e.outcome else ""
                raise Unavailable(f"module {name!r} is not loaded{why}", {"module": name, "state": str(e.state)})
            left = deadline - loop.time()
            if left <= 0:
                raise self._still_loading(e, limit)
            changed = e.changed
            e.waiting += 1
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                pass  # checked once more above, then reported
            finally:
                e.waiting -= 1

    def _still_loading(self, e: _Entry, waited: float) -> Timeout:
        started = e.queued_at if e.queued_at is not None else e.since
        loading_for = time.monotonic() - started if started is not None else waited
        stage = self._stage(e)
        state = str(e.state) if e.state in _ON else "queued"
        return Timeout(
            f"module {e.name!r} is still loading{f' ({stage})' if stage else ''} after {loading_for:.0f} s; "
            f"gave up waiting after {waited:g} s (modules.{e.name}.load_wait); try again shortly",
            {"module": e.name, "state": state, "loading_for": round(loading_for, 1), "waited": waited, "stage": stage},
        )

    def _expect(self, e: _Entry) -> None:
        cls = self._resolve_quietly(e)
        if e.unexpect or cls is None:
            return
        e.outcome = None
        for method in cls.provides:
            # ValueError: a module for the same slot is queued too; calls wait for the first, the second is refused.
            with contextlib.suppress(ValueError):
                e.unexpect.append(self._hub.expect(method, functools.partial(self.wait_active, e.name)))

    def _unexpect(self, e: _Entry, outcome: str | None = None) -> None:
        while e.unexpect:
            e.unexpect.pop()()
        if outcome is not None:
            e.outcome = outcome
        self._changed(e)

    async def shutdown(self) -> None:
        """Unload every loaded module, dependents before their dependencies; wishes are left untouched."""
        while True:
            on = [e for e in self._entries.values() if e.state in _ON]
            if not on:
                return
            leaves = [e for e in on if not self._dependents(e.name)] or on
            for e in leaves:
                async with e.lock:
                    if e.state in _ON:
                        await self._unload(e)

    # -- helpers ------------------------------------------------------------------------------------------
    def _entry(self, name: str) -> _Entry:
        e = self._entries.get(name)
        if e is None:
            raise NotFound(f"no module named {name!r} (known: {', '.join(self.names())})")
        return e

    def _resolve(self, e: _Entry) -> type[Module]:
        cls = self._resolve_quietly(e)
        if cls is None:
            raise Unavailable(f"module {e.name!r} cannot be imported: {e.import_error}")
        return cls

    def _resolve_quietly(self, e: _Entry) -> type[Module] | None:
        """Import the module's class once; heavy dependencies stay behind its ``load()``."""
        if e.cls is None and e.import_error is None:
            mod_name, _, cls_name = e.spec.partition(":")
            try:
                cls = getattr(importlib.import_module(mod_name), cls_name)
            except Exception as exc:
                e.import_error = f"{type(exc).__name__}: {exc}"
                log.error("cannot import module %s from %s: %s", e.name, e.spec, e.import_error)
                return None
            if not (isinstance(cls, type) and issubclass(cls, Module)) or getattr(cls, "name", None) != e.name:
                e.import_error = f"{e.spec} is not a Module subclass named {e.name!r}"
                return None
            e.cls = cls
        return e.cls

    @staticmethod
    def _changed(e: _Entry) -> None:
        e.changed.set()
        e.changed = asyncio.Event()

    def _set(self, e: _Entry, state: ModuleState) -> None:
        e.state = state
        self._changed(e)
        body: dict[str, Any] = {"name": e.name, "state": str(state)}
        if state is ModuleState.FAILED and e.error:
            body["error"] = e.error
        self._hub.publish(MODULE_STATE, body)
