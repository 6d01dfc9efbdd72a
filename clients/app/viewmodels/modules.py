"""The modules screen: every module with its live state, and what a toggle would do before the user taps it.

States come from ``module.list`` and then from ``module.state`` events, so a module loaded from the CLI or
another phone flips here too. ``plan(name)`` works out, from the same list, which dependencies a load would
bring up, which loaded modules are in its way (conflicts, or the same slot), which modules an unload would
break, and the memory involved: the screen shows that before acting, and the daemon has the last word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bus.errors import BusError
from bus.topics import MODULE_STATE
from clients.app.viewmodels.base import Observable
from clients.app.viewmodels.connection import ConnectionVM
from clients.sdk import Event

UP = ("loading", "loaded", "active")


@dataclass
class ModuleRow:
    name: str
    description: str = ""
    state: str = "unloaded"
    depends: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    slot: str | None = None
    memory_estimate: int | None = None
    error: str | None = None

    @property
    def on(self) -> bool:
        return self.state in UP

    @classmethod
    def from_body(cls, m: dict[str, Any]) -> ModuleRow:
        return cls(
            m["name"],
            m.get("description", ""),
            m.get("state", "unloaded"),
            list(m.get("depends") or []),
            list(m.get("conflicts") or []),
            m.get("slot"),
            m.get("memory_estimate"),
            m.get("error"),
        )


@dataclass
class ModulePlan:
    """What toggling ``name`` would do; ``ok`` is False when the daemon would refuse it."""

    name: str
    action: str  # "load" | "unload"
    will_load: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    dependents: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    memory: int = 0

    @property
    def ok(self) -> bool:
        return not (self.blocking or self.dependents or self.missing)

    def summary(self) -> list[str]:
        """Sentences for the confirmation dialog."""
        out = []
        if self.action == "load":
            extra = [n for n in self.will_load if n != self.name]
            if extra:
                out.append("Also loads: " + ", ".join(extra))
            if self.memory:
                out.append(f"Needs about {format_bytes(self.memory)} of memory")
            if self.missing:
                out.append("Missing dependencies: " + ", ".join(self.missing))
            if self.blocking:
                out.append("Conflicts with loaded: " + ", ".join(self.blocking) + " (unload first)")
        else:
            if self.dependents:
                out.append("Needed by loaded: " + ", ".join(self.dependents) + " (unload those first)")
            if self.memory:
                out.append(f"Frees about {format_bytes(self.memory)}")
        return out or [f"{self.action.capitalize()} {self.name}"]


def format_bytes(n: int | float | None) -> str:
    if not n:
        return "–"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class ModulesVM(Observable):
    """Notifies ``rows`` (the list or a state changed), ``pending`` and ``error``."""

    def __init__(self, conn: ConnectionVM) -> None:
        super().__init__()
        self.conn = conn
        self.rows: list[ModuleRow] = []
        self.pending: set[str] = set()
        conn.on_event(MODULE_STATE, self._on_state)
        conn.on_online(lambda restarted: self.refresh())

    def row(self, name: str) -> ModuleRow | None:
        return next((r for r in self.rows if r.name == name), None)

    @property
    def memory_in_use(self) -> int:
        """The summed memory estimates of the modules that are up."""
        return sum(r.memory_estimate or 0 for r in self.rows if r.on)

    async def refresh(self) -> None:
        try:
            body = await self.conn.require().call("module.list")
        except BusError as exc:
            self.set_error(f"cannot list modules: {exc.message}")
            return
        self.rows = [ModuleRow.from_body(m) for m in body["modules"]]
        self.notify("rows", self.rows)

    def plan(self, name: str) -> ModulePlan:
        row = self.row(name)
        if row is None:
            return ModulePlan(name, "load", missing=[name])
        if row.on:
            dependents = self._dependents(name)
            return ModulePlan(name, "unload", dependents=dependents, memory=row.memory_estimate or 0)
        will_load: list[str] = []
        missing: list[str] = []
        self._collect(name, will_load, missing, set())
        loading = [self.row(n) for n in will_load]
        blocking: list[str] = []
        for new in (r for r in loading if r is not None):
            for other in self.rows:
                if not other.on or other.name in will_load or other.name in blocking:
                    continue
                clash = other.name in new.conflicts or new.name in other.conflicts
                if clash or (new.slot is not None and new.slot == other.slot):
                    blocking.append(other.name)
        memory = sum((r.memory_estimate or 0) for r in loading if r is not None)
        return ModulePlan(name, "load", will_load, blocking, [], missing, memory)

    def _collect(self, name: str, out: list[str], missing: list[str], seen: set[str]) -> None:
        """Dependencies first, then the module itself: the order the daemon loads them in."""
        if name in seen:
            return
        seen.add(name)
        row = self.row(name)
        if row is None:
            missing.append(name)
            return
        if row.on:
            return
        for dep in row.depends:
            self._collect(dep, out, missing, seen)
        out.append(name)

    def _dependents(self, name: str) -> list[str]:
        """Loaded modules that need ``name``, directly or through another."""
        found: list[str] = []
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for r in self.rows:
                if r.on and current in r.depends and r.name not in found:
                    found.append(r.name)
                    frontier.append(r.name)
        return found

    async def toggle(self, name: str) -> bool:
        """Load or unload ``name``; True when the daemon did it (otherwise ``error`` says why)."""
        row = self.row(name)
        if row is None or name in self.pending:
            return False
        method = "module.unload" if row.on else "module.load"
        self.pending.add(name)
        self.notify("pending", name)
        try:
            reply = await self.conn.require().call(method, {"name": name}, timeout=600.0)
        except BusError as exc:
            self.set_error(f"{name}: {exc.message}")
            return False
        else:
            row.state = reply.get("state", row.state)
            row.error = None
            self.notify("rows", self.rows)
            return True
        finally:
            self.pending.discard(name)
            self.notify("pending", name)
            await self.refresh()

    def _on_state(self, ev: Event) -> None:
        row = self.row(ev.body.get("name", ""))
        if row is None:
            self.spawn(self.refresh(), name="enigma-app-modules-refresh")
            return
        row.state = ev.body.get("state", row.state)
        row.error = ev.body.get("error")
        self.notify("rows", self.rows)
