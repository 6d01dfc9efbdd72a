"""The Kivy application: it owns the view models, the theme and the shell, and runs on the SDK's asyncio loop.

Kivy runs on the same asyncio loop as the SDK (``App.async_run``), so view-model notifications arrive on the
UI thread and update widgets directly. What each screen shows and does is its controller's
(``clients/app/ui/screens/``); the frame around them — top bar, navigation, toast — is the shell's
(``shell.py``). This class holds what every screen shares: the view models, the colours and the font size.
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
from kivy.lang import Builder
from kivy.metrics import dp, sp
from kivy.properties import BooleanProperty, ColorProperty, NumericProperty, StringProperty

from bus.errors import BusError
from clients.app.store import AppStore, DaemonEntry
from clients.app.ui.screens import SCREENS
from clients.app.ui.screens.base import Context, ScreenController, Views, route
from clients.app.ui.shell import WIDE, Shell
from clients.app.ui.theme import PALETTES, Colour
from clients.app.viewmodels import ChatVM, ConnectionVM, ModulesVM, SettingsVM, StatusVM

log = logging.getLogger("enigma.app")

KV_PATH = Path(__file__).with_name("enigma.kv")  # building blocks and the shell; each screen brings its own rules

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

    theme = StringProperty("dark")
    font_points = NumericProperty(15)
    font_size = NumericProperty(15)
    wide = BooleanProperty(False)  # the window is at least WIDE dp wide: sidebar, sessions beside the chat

    def __init__(
        self, *, data_dir: Path | None = None, rpc: str | None = None, events: str | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self._data_dir = data_dir
        self._rpc, self._events = rpc, events
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unbind: list[Callable[[], None]] = []
        self.shell: Shell | None = None
        self.started = asyncio.Event()

    # -- building -------------------------------------------------------------------------------------------
    def build(self) -> Shell:
        store = AppStore(self._data_dir or Path(self.user_data_dir))
        conn = ConnectionVM(store, device_name=f"app-{socket.gethostname()}")
        self.views = Views(store, conn, ChatVM(conn), ModulesVM(conn), StatusVM(conn), SettingsVM(store, conn))
        self.apply_theme(self.views.settings.theme)
        self.apply_font(self.views.settings.font_size)
        for vm in self.views.all():  # each view model's failures are said once, whichever screen shows it
            self._unbind.append(route(vm, {"error": self.say}))
        self._unbind.append(
            route(self.views.settings, {"theme": self.apply_theme, "font_size": self.apply_font}),
        )
        ctx = Context(self.views, go=self.go, say=self.say, show=self.show, colour=self.colour)
        controllers = [self._load(cls, ctx) for cls in SCREENS]
        Window.bind(size=lambda *_: self._on_resize())
        self._on_resize()
        self.shell = Shell(ctx, controllers)
        self.shell.restyle()
        for c in controllers:
            c.start()
        return self.shell

    @staticmethod
    def _load(cls: type[ScreenController], ctx: Context) -> ScreenController:
        """Load the screen's KV rules (replacing those of an earlier app in this process), then build it."""
        source = f"{cls.__module__}.kv"
        Builder.unload_file(source)
        Builder.load_string(cls.kv, filename=source)
        return cls(ctx)

    def on_start(self) -> None:
        self.go(self._startup())
        Clock.schedule_once(lambda _dt: self.started.set(), 0)

    async def _startup(self) -> None:
        if self._rpc:
            from clients.app.viewmodels.address import parse_address

            rpc, events = parse_address(self._rpc) if not self._events else (self._rpc, self._events)
            entry: DaemonEntry | None = DaemonEntry(rpc.removeprefix("tcp://"), rpc, events)
        else:
            last = self.views.store.settings().last_daemon
            entry = self.views.store.get(last) if last else None
        if entry is None:
            self.show("connect")
            return
        await self.views.conn.connect(entry)

    def on_stop(self) -> None:
        """From here on no widget may be built: KV rules need the running app. Stop listening to the views."""
        for unbind in self._unbind:
            unbind()
        self._unbind = []
        if self.shell is not None:
            self.shell.close()

    async def close_views(self) -> None:
        """Disconnect and end every background task (after the window closed)."""
        self.on_stop()
        for vm in self.views.all():
            await vm.aclose()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what screens share ---------------------------------------------------------------------------------
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
        if self.shell is not None:
            self.shell.say(text)

    @property
    def toast(self) -> str:
        return self.shell.toast if self.shell is not None else ""

    def show(self, name: str) -> None:
        if self.shell is not None:
            self.shell.show(name)

    def controller(self, name: str) -> ScreenController:
        assert self.shell is not None, "the app is not built yet"
        return self.shell.controllers[name]

    def screen(self, name: str) -> Any:
        return self.controller(name).screen

    def colour(self, key: str) -> Colour:
        return tuple(getattr(self, f"c_{key}"))

    def _on_resize(self) -> None:
        self.wide = Window.width >= dp(WIDE)

    # -- theme and font -------------------------------------------------------------------------------------
    def apply_theme(self, theme: str) -> None:
        self.theme = theme
        for key, colour in PALETTES[theme].items():
            setattr(self, f"c_{key}", colour)
        Window.clearcolor = PALETTES[theme]["bg"]
        if self.shell is not None:  # what baked colours into data
            self.shell.restyle()
            for c in self.shell.controllers.values():
                c.restyle()

    def apply_font(self, points: int) -> None:
        self.font_points = points
        self.font_size = sp(points)


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
