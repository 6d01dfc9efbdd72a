"""The status screen: what the daemon is doing now, and the robots it knows with an e-stop at hand.

``sys.status`` gives the node, version, uptime and clients, and while the daemon is still bringing its modules
up (``phase`` ``loading``) what it is loading and for how long — followed by ``module.state`` events until
``sys.loaded``. ``llm.stats`` and then ``llm.state`` events give the model, its queue and what is generating
(asked only once a language-model module is active: a call to a loading one would wait for it).
``robot.list`` and then ``robot.state``/``robot.telemetry`` events give the robots. ``moving`` lists robots
in motion: while it is not empty the app keeps an e-stop button on every screen, and ``estop()`` sends
``robot.command {"id": "all", "action": "estop"}`` (or one robot's).
"""

from __future__ import annotations

import time
from typing import Any

from bus.errors import BusError, UnknownMethod
from bus.topics import LLM_STATE, MODULE_STATE, ROBOT, ROBOT_STATE, ROBOT_TELEMETRY, SYS_LOADED
from clients.app.viewmodels.base import Observable
from clients.app.viewmodels.connection import ConnectionVM
from clients.sdk import Event

LLM_MODULES = ("llm", "ollama", "llamacpp")


def format_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s}s" if m else f"{s}s"


class StatusVM(Observable):
    """Notifies ``status``, ``llm``, ``robots`` and ``moving`` (the e-stop's visibility)."""

    def __init__(self, conn: ConnectionVM) -> None:
        super().__init__()
        self.conn = conn
        self.status: dict[str, Any] = {}
        self.llm: dict[str, Any] | None = None  # None: no language-model module loaded
        self.robots: dict[str, dict[str, Any]] = {}
        self.robots_available = False
        self.last_estop: str = ""
        self._fetched = 0.0  # monotonic time of the last sys.status, to advance uptime between fetches
        # Modules that serve llm.stats: the built-in backends, and while the daemon starts up, whatever
        # module.list says declares it (a third-party backend is then recognised as the model too).
        self._llm_modules: set[str] = set(LLM_MODULES)
        conn.on_event(LLM_STATE, self._on_llm)
        conn.on_event(ROBOT, self._on_robot)
        conn.on_event(MODULE_STATE, self._on_module)
        conn.on_event(SYS_LOADED, self._on_loaded)
        conn.on_online(lambda restarted: self.refresh())

    # -- derived ----------------------------------------------------------------------------------------------
    @property
    def uptime(self) -> float:
        if "uptime" not in self.status:
            return 0.0
        return float(self.status["uptime"]) + (time.monotonic() - self._fetched)

    @property
    def moving(self) -> list[str]:
        return sorted(rid for rid, r in self.robots.items() if r.get("online", True) and r.get("state") == "moving")

    @property
    def loading(self) -> list[dict[str, Any]]:
        """What the daemon is still loading (``sys.status`` ``loading``): empty once it is ready."""
        return list(self.status.get("loading") or []) if self.status.get("phase") == "loading" else []

    def _llm_loading(self) -> dict[str, Any] | None:
        return next((m for m in self.loading if m.get("name") in self._llm_modules), None)

    def summary(self) -> list[tuple[str, str]]:
        """(label, value) rows for the screen."""
        s = self.status
        rows = [
            ("Daemon", f"{s.get('node_id', '?')} · v{s.get('version', '?')}"),
            ("Uptime", format_duration(self.uptime) if s else "–"),
            ("Clients", str(s.get("clients", "–"))),
            ("In flight", str(s.get("inflight", "–"))),
        ]
        if self.loading:
            rows.append(("Starting up", "; ".join(_loading_text(m) for m in self.loading)))
        llm_loading = self._llm_loading()
        if self.llm is None and llm_loading is not None:
            rows.append(("Model", f"loading ({_loading_text(llm_loading)})"))
        elif self.llm is None:
            rows.append(("Model", "no language model loaded"))
        else:
            rows.append(("Model", f"{self.llm.get('model') or '?'} ({self.llm.get('backend', '?')})"))
            rows.append(("Model state", str(self.llm.get("state", "?"))))
            rows.append(("Generating / queued", f"{self.llm.get('active', 0)} / {self.llm.get('queue', 0)}"))
            if "completed" in self.llm:
                rows.append(("Replies served", str(self.llm["completed"])))
        active = [m["name"] for m in s.get("modules", []) if m.get("state") == "active"]
        rows.append(("Modules on", ", ".join(active) or "none"))
        return rows

    # -- loading ----------------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        client = self.conn.require()
        try:
            self.status = await client.call("sys.status")
            self._fetched = time.monotonic()
        except BusError as exc:
            self.set_error(f"cannot read the daemon's status: {exc.message}")
            return
        self.notify("status", self.status)
        if self.loading:
            await self._learn_llm_modules()
        await self.refresh_llm()
        await self.refresh_robots()

    async def _learn_llm_modules(self) -> None:
        try:
            listed = await self.conn.require().call("module.list")
        except BusError:
            return  # the built-in names still apply
        self._llm_modules = set(LLM_MODULES) | {
            m["name"] for m in listed.get("modules", []) if "llm.stats" in (m.get("provides") or [])
        }

    async def refresh_llm(self) -> None:
        if self._llm_loading() is not None:  # llm.stats would wait for the model: the status says enough
            self.llm = None
            self.notify("llm", self.llm)
            return
        try:
            self.llm = await self.conn.require().call("llm.stats")
        except UnknownMethod:
            self.llm = None
        except BusError as exc:
            self.set_error(f"cannot read the model's state: {exc.message}")
        self.notify("llm", self.llm)

    async def refresh_robots(self) -> None:
        if any(m.get("name") == "robots" for m in self.loading):  # robot.list would wait for the module
            return
        try:
            body = await self.conn.require().call("robot.list")
        except UnknownMethod:
            self.robots_available, self.robots = False, {}
        except BusError as exc:
            self.set_error(f"cannot list robots: {exc.message}")
            return
        else:
            self.robots_available = True
            self.robots = {r["id"]: dict(self.robots.get(r["id"], {}), **r) for r in body["robots"]}
        self.notify("robots", self.robots)
        self.notify("moving", self.moving)

    # -- acting -----------------------------------------------------------------------------------------------
    async def estop(self, robot_id: str = "all") -> bool:
        """Stop ``robot_id`` (every robot by default) now; True when the daemon sent it."""
        try:
            reply = await self.conn.require().call("robot.command", {"id": robot_id, "action": "estop"}, timeout=5.0)
        except BusError as exc:
            self.set_error(f"e-stop failed: {exc.message}")
            return False
        self.last_estop = reply.get("sent", "")
        self.notify("estop", self.last_estop)
        return True

    async def command(self, robot_id: str, action: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Send one command to a robot; returns the robot's result, or None (``error`` says why)."""
        body: dict[str, Any] = {"id": robot_id, "action": action}
        if params:
            body["params"] = params
        try:
            reply = await self.conn.require().call("robot.command", body, timeout=15.0)
        except BusError as exc:
            self.set_error(f"{robot_id} {action}: {exc.message}")
            return None
        result: dict[str, Any] = reply.get("result", {})
        return result

    # -- events -----------------------------------------------------------------------------------------------
    def _on_llm(self, ev: Event) -> None:
        self.llm = dict(self.llm or {}, **ev.body)
        if ev.body.get("state") == "unloaded":
            self.llm = None
        self.notify("llm", self.llm)

    def _on_loaded(self, ev: Event) -> None:
        self.spawn(self.refresh(), name="enigma-app-status-refresh")

    def _on_robot(self, ev: Event) -> None:
        rid = ev.body.get("id")
        if not isinstance(rid, str):
            return
        before = self.moving
        if ev.topic == ROBOT_STATE:
            self.robots[rid] = dict(self.robots.get(rid, {}), **ev.body)
            self.notify("robots", self.robots)
        elif ev.topic == ROBOT_TELEMETRY:
            robot = self.robots.setdefault(rid, {"id": rid, "online": True})
            robot["telemetry"] = ev.body
            if isinstance(ev.body.get("state"), str):
                robot["state"] = ev.body["state"]
            self.notify("telemetry", rid)
        if self.moving != before:
            self.notify("moving", self.moving)

    def _on_module(self, ev: Event) -> None:
        name, state = ev.body.get("name"), ev.body.get("state")
        if self.loading:  # the daemon is starting up: every step changes what the screen says is loading
            self.spawn(self.refresh(), name="enigma-app-status-refresh")
            return
        if state not in ("active", "unloaded", "failed"):
            return
        if name in self._llm_modules:
            self.spawn(self.refresh_llm(), name="enigma-app-llm-refresh")
        elif name == "robots":
            self.spawn(self.refresh_robots(), name="enigma-app-robots-refresh")


def _loading_text(m: dict[str, Any]) -> str:
    """``llm: loading model.gguf, 12s`` — one module of ``sys.status``'s ``loading``."""
    what = m.get("stage") or m.get("state", "loading")
    return f"{m.get('name', '?')}: {what}, {format_duration(float(m.get('for', 0)))}"
