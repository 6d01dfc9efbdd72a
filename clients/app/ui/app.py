"""The Kivy application: it owns the view models, draws their state and turns taps into their method calls.

Kivy runs on the same asyncio loop as the SDK (``App.async_run``), so view-model notifications arrive on the
UI thread and update widgets directly. Everything shown comes from the view models; this class only maps
their state onto Kivy properties that ``enigma.kv`` binds to, and keeps the widgets that list things
(messages, sessions, modules, robots, daemons) in step.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.factory import Factory
from kivy.lang import Builder
from kivy.metrics import dp, sp
from kivy.properties import (
    BooleanProperty,
    ColorProperty,
    ListProperty,
    NumericProperty,
    StringProperty,
)

from bus.errors import BusError
from clients.app.store import AppStore, DaemonEntry
from clients.app.ui import dialogs, widgets
from clients.app.ui.theme import MODULE_COLOUR, PALETTES, STATE_COLOUR
from clients.app.viewmodels import ChatLine, ChatVM, ConnectionVM, ModulesVM, SettingsVM, StatusVM
from clients.app.viewmodels.connection import LinkView
from clients.app.viewmodels.modules import format_bytes

log = logging.getLogger("enigma.app")

KV_PATH = Path(__file__).with_name("enigma.kv")  # building blocks, the frame and the chat screen
SCREENS_KV = Path(__file__).with_name("screens.kv")  # modules, status, settings, connect
NO_PERSONA = "No persona"
WIDE = 720  # dp: from this window width on, the sessions list sits beside the conversation
TOAST_SECONDS = 4.0
STATUS_REFRESH = 10.0  # seconds between sys.status reads while the status screen is shown

Driver = Callable[["EnigmaApp"], Awaitable[None]]


class EnigmaApp(App):
    title = "Enigma"
    kv_file = str(KV_PATH)  # App.run loads it before build()

    c_bg = ColorProperty(PALETTES["dark"]["bg"])
    c_surface = ColorProperty(PALETTES["dark"]["surface"])
    c_raised = ColorProperty(PALETTES["dark"]["raised"])
    c_fg = ColorProperty(PALETTES["dark"]["fg"])
    c_muted = ColorProperty(PALETTES["dark"]["muted"])
    c_accent = ColorProperty(PALETTES["dark"]["accent"])
    c_user = ColorProperty(PALETTES["dark"]["user"])
    c_bot = ColorProperty(PALETTES["dark"]["bot"])
    c_ok = ColorProperty(PALETTES["dark"]["ok"])
    c_warn = ColorProperty(PALETTES["dark"]["warn"])
    c_danger = ColorProperty(PALETTES["dark"]["danger"])
    c_input = ColorProperty(PALETTES["dark"]["input"])
    c_state = ColorProperty(PALETTES["dark"]["muted"])

    theme = StringProperty("dark")
    font_points = NumericProperty(15)
    font_size = NumericProperty(15)
    wide = BooleanProperty(False)
    moving = BooleanProperty(False)
    toast = StringProperty("")
    link_text = StringProperty("not connected")
    link_long = StringProperty("not connected")
    chat_title = StringProperty("New conversation")
    chat_busy = BooleanProperty(False)
    chat_lines = BooleanProperty(False)
    chat_hint = StringProperty("Connecting…")
    persona_text = StringProperty(NO_PERSONA)
    persona_names = ListProperty([NO_PERSONA])
    sessions_text = StringProperty("No conversations yet")
    modules_text = StringProperty("")
    robots_text = StringProperty("")
    robots_on = BooleanProperty(False)
    address_text = StringProperty("")
    device_text = StringProperty("")
    discovered_text = StringProperty("")
    pairing_text = StringProperty("Enter the daemon's address and its public key (enigmad keys show), then tap Pair.")
    allow_command = StringProperty("")

    def __init__(
        self, *, data_dir: Path | None = None, rpc: str | None = None, events: str | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self._data_dir = data_dir
        self._rpc, self._events = rpc, events
        self._tasks: set[asyncio.Task[Any]] = set()
        self._toast_event: Any = None
        self._status_age = 0.0
        self.started = asyncio.Event()

    # -- building -------------------------------------------------------------------------------------------
    def build(self) -> widgets.Root:
        self.store = AppStore(self._data_dir or Path(self.user_data_dir))
        self.conn = ConnectionVM(self.store, device_name=f"app-{socket.gethostname()}")
        self.chat = ChatVM(self.conn)
        self.modules = ModulesVM(self.conn)
        self.status = StatusVM(self.conn)
        self.settings = SettingsVM(self.store, self.conn)
        self.apply_theme(self.settings.theme)
        self.apply_font(self.settings.font_size)
        Builder.unload_file(str(SCREENS_KV))  # a second app in this process must not apply the rules twice
        Builder.load_file(str(SCREENS_KV))
        self.root = widgets.Root()
        Window.bind(size=lambda *_: self._on_resize())
        self._on_resize()
        self._unbind = [
            self.conn.bind(self._on_conn),
            self.chat.bind(self._on_chat),
            self.modules.bind(self._on_modules),
            self.status.bind(self._on_status),
            self.settings.bind(self._on_settings),
        ]
        public, fp = self.conn.device_identity()
        self.device_text = f"Key fingerprint {fp}\nPublic key {public}\nApp data in {self.store.root}"
        self.discovered_text = "Nothing found yet: discovery lists daemons announcing themselves on the LAN."
        self._fill_remembered()
        return self.root

    def on_start(self) -> None:
        self.go(self._startup())
        self._ticker = Clock.schedule_interval(self._tick, 1.0)
        Clock.schedule_once(lambda _dt: self.started.set(), 0)

    async def _startup(self) -> None:
        entry = None
        if self._rpc:
            from clients.app.viewmodels.address import parse_address

            rpc, events = parse_address(self._rpc) if not self._events else (self._rpc, self._events)
            entry = DaemonEntry(rpc.removeprefix("tcp://"), rpc, events)
        else:
            last = self.store.settings().last_daemon
            entry = self.store.get(last) if last else None
        if entry is None:
            self.address_text = "127.0.0.1:7700"
            self.chat_hint = "Not connected: pick a daemon on the Connect screen."
            self.show("connect")
            return
        await self.conn.connect(entry)

    def on_stop(self) -> None:
        """From here on no widget may be built: KV rules need the running app. Stop the status ticker (its next
        tick may still come before the loop ends) and stop listening to the views."""
        if getattr(self, "_ticker", None) is not None:
            self._ticker.cancel()
        for unbind in getattr(self, "_unbind", []):
            unbind()
        self._unbind = []

    async def close_views(self) -> None:
        """Disconnect and end every background task (after the window closed)."""
        self.on_stop()
        for vm in (self.chat, self.modules, self.status, self.settings, self.conn):
            await vm.aclose()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- small helpers --------------------------------------------------------------------------------------
    def go(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a view-model coroutine from a tap; a failure becomes a toast instead of a crash."""
        task = asyncio.get_event_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("action failed: %r", exc, exc_info=exc)
        self.say(exc.message if isinstance(exc, BusError) else f"{type(exc).__name__}: {exc}")

    def say(self, text: str) -> None:
        self.toast = text
        if self._toast_event is not None:
            self._toast_event.cancel()
        self._toast_event = Clock.schedule_once(lambda _dt: setattr(self, "toast", ""), TOAST_SECONDS)

    def screen(self, name: str) -> Any:
        return self.root.ids[name]

    def show(self, name: str) -> None:
        self.root.ids.screens.current = name
        for tab in ("chat", "modules", "status", "settings"):
            self.root.ids[f"tab_{tab}"].state = "down" if tab == name else "normal"
        if name == "status" and self.conn.client is not None:
            self.refresh_status()
        if name == "connect":
            self._fill_remembered()

    def _on_resize(self) -> None:
        self.wide = Window.width >= dp(WIDE)

    def _tick(self, _dt: float) -> None:
        if self.root.ids.screens.current == "status":
            self._status_age += 1.0
            if self._status_age >= STATUS_REFRESH and self.conn.client is not None:
                self.refresh_status()
            else:
                self._fill_facts()

    # -- theme and font -------------------------------------------------------------------------------------
    def apply_theme(self, theme: str) -> None:
        self.theme = theme
        for key, colour in PALETTES[theme].items():
            setattr(self, f"c_{key}", colour)
        Window.clearcolor = PALETTES[theme]["bg"]
        self._on_conn("state", None)
        if self.root is not None:  # lists that baked colours into their data
            self._fill_modules()
            self._fill_robots()

    def apply_font(self, points: int) -> None:
        self.font_points = points
        self.font_size = sp(points)

    def set_theme(self, theme: str) -> None:
        self.settings.set_theme(theme)

    def set_font_size(self, value: float) -> None:
        if int(value) != self.settings.font_size:
            self.settings.set_font_size(int(value))

    def _on_settings(self, what: str, detail: Any) -> None:
        if what == "theme":
            self.apply_theme(detail)
        elif what == "font_size":
            self.apply_font(detail)
        elif what == "error":
            self.say(detail)

    # -- connection -----------------------------------------------------------------------------------------
    def _on_conn(self, what: str, detail: Any) -> None:
        if not hasattr(self, "conn"):
            return
        conn = self.conn
        if what in ("state", "daemon"):
            name = conn.daemon.name if conn.daemon else "no daemon"
            self.link_text = f"{name} · {conn.state}"
            self.link_long = f"{name}: {conn.state} — {conn.detail}"
            self.c_state = getattr(self, f"c_{STATE_COLOUR.get(conn.state, 'muted')}")
            if conn.daemon is not None:
                self.address_text = conn.daemon.address
            if conn.state != LinkView.CONNECTED and not self.chat.lines:
                self.chat_hint = f"{conn.state.capitalize()}: {conn.detail}"
        elif what == "discovered":
            self._fill_discovered()
        elif what == "error":
            self.say(detail)

    def _fill_remembered(self) -> None:
        box = self.screen("connect").ids.remembered
        box.clear_widgets()
        for d in self.store.daemons():
            keys = f" · paired {d.server_fingerprint}" if d.server_public else ""
            box.add_widget(Factory.DaemonButton(title=d.name, subtitle=f"{d.address}{keys}", daemon_name=d.name))
        if not box.children:
            box.add_widget(Factory.Muted(text="None yet."))

    def _fill_discovered(self) -> None:
        box = self.screen("connect").ids.discovered
        box.clear_widgets()
        for d in self.conn.discovered:
            fp = f" · key {d.fingerprint}" if d.fingerprint else ""
            box.add_widget(
                Factory.DaemonButton(title=d.name, subtitle=f"{d.rpc}{fp}", daemon_name=d.name, discovered=True)
            )
        self.discovered_text = f"{len(self.conn.discovered)} found" if self.conn.discovered else self.discovered_text

    def connect_to(self, name: str, discovered: bool) -> None:
        if discovered:
            found = next((d for d in self.conn.discovered if d.name == name), None)
            if found is not None and found.server_public:  # it speaks CURVE: pair, showing both fingerprints
                self.pair(found.name, f"{found.rpc} {found.events}", found.server_public)
                return
            entry = found.entry() if found else None
        else:
            entry = self.store.get(name)
        if entry is not None:
            self.go(self._switch(entry))

    async def _switch(self, entry: DaemonEntry) -> None:
        self.chat.new_conversation()
        await self.conn.connect(entry)
        self.show("chat")

    def connect_manual(self, address: str, name: str) -> None:
        try:
            entry = self.conn.add_manual(address, name)
        except BusError as exc:
            self.say(exc.message)
            return
        self.go(self._switch(entry))

    def pair(self, name: str, address: str, server_key: str) -> None:
        try:
            info = self.conn.pair(name, address, server_key)
        except BusError as exc:
            self.say(exc.message)
            return
        self.pairing_text = (
            f"This device: {info.device_fingerprint}\nDaemon {info.entry.name}: {info.server_fingerprint}\n"
            "Check that the daemon's fingerprint matches `enigmad keys show` on its host, then admit this "
            "device there with:"
        )
        self.allow_command = info.allow_command
        self._fill_remembered()
        self.go(self.conn.connect(info.entry))

    def forget(self, name: str) -> None:
        self.store.forget(name)
        self._fill_remembered()

    def apply_address(self, address: str) -> None:
        self.go(self.settings.set_address(address))

    # -- chat -----------------------------------------------------------------------------------------------
    @staticmethod
    def _line_data(line: ChatLine) -> dict[str, Any]:
        return {"text": line.text or " ", "role": line.role, "note": line.note, "streaming": line.streaming}

    def _on_chat(self, what: str, detail: Any) -> None:
        ids = self.screen("chat").ids
        if what == "lines":
            ids.messages.data = [self._line_data(x) for x in self.chat.lines]
            self.chat_lines = bool(self.chat.lines)
            self.chat_title = self.chat.title
            self._scroll_to_end()
        elif what == "line":
            ids.messages.data[detail] = self._line_data(self.chat.lines[detail])
            self._scroll_to_end()
        elif what == "busy":
            self.chat_busy = bool(detail)
        elif what == "title":
            self.chat_title = detail
        elif what == "sessions":
            ids.sessions.data = [
                {
                    "session_id": s["id"],
                    "title": s.get("title") or "Untitled",
                    "current": s["id"] == self.chat.session_id,
                }
                for s in self.chat.sessions
            ]
            n = len(self.chat.sessions)
            self.sessions_text = f"{n} conversation{'s' if n != 1 else ''}" if n else "No conversations yet"
            if not self.chat.available:
                self.chat_hint = "Chat is off on this daemon: turn on the chat module in Modules."
            elif not self.chat.lines:
                self.chat_hint = "Ask anything. Replies stream in as they are written."
        elif what == "personas":
            self.persona_names = [NO_PERSONA] + [p["name"] for p in self.chat.personas]
        elif what == "persona":
            self.persona_text = detail or NO_PERSONA
        elif what == "error":
            self.say(detail)

    def _scroll_to_end(self) -> None:
        """Show the newest message: the bottom when the conversation overflows, else the top."""
        rv = self.screen("chat").ids.messages

        def scroll(_dt: float) -> None:
            rv.scroll_y = 0 if rv.children and rv.children[0].height > rv.height else 1

        Clock.schedule_once(scroll, 0)

    def send_message(self) -> None:
        entry = self.screen("chat").ids.entry
        text = entry.text.strip()
        if not text or self.chat.busy:
            return
        entry.text = ""
        self.go(self.chat.send(text))

    def stop_reply(self) -> None:
        self.go(self.chat.stop())

    def regenerate(self) -> None:
        self.go(self.chat.regenerate())

    def new_conversation(self) -> None:
        self.chat.new_conversation()
        self.screen("chat").show_sessions = False

    def open_session(self, session_id: str) -> None:
        self.screen("chat").show_sessions = False
        self.go(self.chat.open_session(session_id))

    def delete_session(self, session_id: str) -> None:
        self.go(self.chat.delete_session(session_id))

    def pick_persona(self, text: str) -> None:
        name = None if text == NO_PERSONA else text
        if name != self.chat.persona:
            self.chat.select_persona(name)

    def copy(self, index: int) -> None:
        from kivy.core.clipboard import Clipboard

        try:
            Clipboard.copy(self.chat.copy_text(index))
        except Exception as exc:  # no clipboard provider (e.g. a headless window)
            self.say(f"cannot copy: {exc}")
            return
        self.say("Copied")

    def rename_dialog(self) -> None:
        if self.chat.session_id is not None:
            dialogs.rename(self, self.chat.session_id, self.chat.title)

    # -- modules --------------------------------------------------------------------------------------------
    def _on_modules(self, what: str, detail: Any) -> None:
        if what in ("rows", "pending"):
            self._fill_modules()
        elif what == "error":
            self.say(detail)

    def _fill_modules(self) -> None:
        data = []
        for r in self.modules.rows:
            facts = []
            if r.depends:
                facts.append("needs " + ", ".join(r.depends))
            if r.conflicts:
                facts.append("conflicts with " + ", ".join(r.conflicts))
            if r.slot:
                facts.append(f"slot {r.slot}")
            if r.memory_estimate:
                facts.append(f"memory ~{format_bytes(r.memory_estimate)}")
            colour = getattr(self, f"c_{MODULE_COLOUR.get(r.state, 'muted')}")
            data.append(
                {
                    "name": r.name,
                    "description": r.description,
                    "state": r.state,
                    "colour": colour,
                    "action": "Turn off" if r.on else "Turn on",
                    "facts": " · ".join(facts),
                    "error": r.error or "",
                    "pending": r.name in self.modules.pending,
                }
            )
        self.screen("modules").ids.list.data = data
        on = sum(1 for r in self.modules.rows if r.on)
        memory = self.modules.memory_in_use
        in_use = f" · about {format_bytes(memory)} in use" if memory else ""
        self.modules_text = f"{on} of {len(self.modules.rows)} modules on{in_use}"

    def ask_toggle(self, name: str) -> None:
        """Show what the toggle would do (dependencies, conflicts, memory) and act only on confirmation."""
        dialogs.confirm_toggle(self, self.modules.plan(name))

    # -- status and robots ----------------------------------------------------------------------------------
    def _on_status(self, what: str, detail: Any) -> None:
        if what in ("status", "llm"):
            self._status_age = 0.0 if what == "status" else self._status_age
            self._fill_facts()
        elif what in ("robots", "telemetry", "moving"):
            self._fill_robots()
            self.moving = bool(self.status.moving)
        elif what == "estop":
            self.say(f"E-stop sent ({detail})")
        elif what == "error":
            self.say(detail)

    def _fill_facts(self) -> None:
        box = self.screen("status").ids.facts
        box.clear_widgets()
        for label, value in self.status.summary():
            box.add_widget(Factory.StatusRow(label=label, value=value))

    def _fill_robots(self) -> None:
        box = self.screen("status").ids.robots
        box.clear_widgets()
        for rid, r in sorted(self.status.robots.items()):
            parts = ["online" if r.get("online", True) else "offline", str(r.get("state", "?"))]
            if r.get("battery") is not None:
                parts.append(f"battery {r['battery']:.0%}" if r["battery"] <= 1 else f"battery {r['battery']}")
            if r.get("driver"):
                parts.append(f"driver {r['driver']}")
            moving = rid in self.status.moving
            box.add_widget(Factory.RobotItem(robot_id=rid, line=" · ".join(parts), moving=moving))
        self.robots_on = self.status.robots_available
        if not self.status.robots_available:
            self.robots_text = "The robots module is off."
        else:
            n = len(self.status.robots)
            self.robots_text = f"{n} robot{'s' if n != 1 else ''}, {len(self.status.moving)} moving"

    def refresh_status(self) -> None:
        self._status_age = 0.0
        self.go(self.status.refresh())

    def estop(self, robot_id: str = "all") -> None:
        self.go(self.status.estop(robot_id))


async def run(app: EnigmaApp, driver: Driver | None = None) -> None:
    """Run the app until its window closes; ``driver(app)``, if given, runs beside it and then closes it.

    A driver is how a script (or a test) operates the real app: it awaits ``app.started``, taps through
    widgets and view models, and its exception, if any, is raised from here after the app has closed.
    """
    drive: asyncio.Task[None] | None = None
    if driver is not None:

        async def drive_then_stop() -> None:
            try:
                await app.started.wait()
                await driver(app)
            finally:
                app.stop()

        drive = asyncio.ensure_future(drive_then_stop())
    try:
        await app.async_run(async_lib="asyncio")
    finally:
        await app.close_views()
    if drive is not None:
        await drive
