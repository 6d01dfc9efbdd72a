"""What every screen is made of: a controller that owns one Kivy screen, and the narrow context it works in.

A controller turns its view models' notifications into widget state through a table of handlers (event name →
method), and the screen's taps into view-model calls. It never sees the app object: what it may do beyond its
own screen (run a coroutine, show a toast, go to another screen, read the theme's colours) is in ``Context``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from kivy.properties import ObjectProperty
from kivy.uix.screenmanager import Screen

from clients.app.store import AppStore
from clients.app.ui.theme import Colour
from clients.app.viewmodels import ChatVM, ConnectionVM, ModulesVM, Observable, SettingsVM, StatusVM

Handler = Callable[[Any], None]


@dataclass(frozen=True)
class Views:
    """The app's view models, one per concern, all on one connection."""

    store: AppStore
    conn: ConnectionVM
    chat: ChatVM
    modules: ModulesVM
    status: StatusVM
    settings: SettingsVM

    def all(self) -> tuple[Observable, ...]:
        """In the order they close: the connection last, since the others still use it while closing."""
        return (self.chat, self.modules, self.status, self.settings, self.conn)


@dataclass(frozen=True)
class Context:
    """What a controller may reach beyond its own screen."""

    views: Views
    go: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]  # run a coroutine; its failure becomes a toast
    say: Callable[[str], None]  # a toast on the current screen
    show: Callable[[str], None]  # switch to the screen of that name
    colour: Callable[[str], Colour]  # a palette key ("ok", "danger", …) in the current theme


class EnigmaScreen(Screen):
    """A screen whose KV rules reach their controller as ``root.controller``."""

    controller = ObjectProperty(None, allownone=True)


def controller_of(widget: Any) -> Any:
    """The controller of the screen ``widget`` sits on: for rows (recycled or not) whose rules have no ``root``
    that is the screen."""
    node = widget
    while node is not None:
        if isinstance(node, EnigmaScreen):
            return node.controller
        node = node.parent
    raise LookupError(f"{widget!r} is not on a screen")


def route(vm: Observable, handlers: Mapping[str, Handler]) -> Callable[[], None]:
    """Call ``handlers[what](detail)`` for each notification of ``vm`` that has a handler; returns the unbind."""

    def on_change(what: str, detail: Any) -> None:
        handler = handlers.get(what)
        if handler is not None:
            handler(detail)

    return vm.bind(on_change)


class ScreenController:
    """One screen. Subclasses set ``name`` (the screen's id), ``title`` (its navigation entry), ``kv`` (the KV
    rules of the screen and its rows) and ``screen_class``, then bind their view models in ``__init__`` with
    ``listen``."""

    name: ClassVar[str]
    title: ClassVar[str]
    kv: ClassVar[str] = ""
    screen_class: ClassVar[type[EnigmaScreen]] = EnigmaScreen

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.views = ctx.views
        self.screen = self.screen_class(name=self.name)
        self.screen.controller = self
        self._unbind: list[Callable[[], None]] = []

    def listen(self, vm: Observable, handlers: Mapping[str, Handler]) -> None:
        """Route ``vm``'s notifications to ``handlers`` by name until the app stops (``error`` is the app's)."""
        self._unbind.append(route(vm, handlers))

    @property
    def shown(self) -> bool:
        manager = self.screen.manager
        return manager is not None and manager.current == self.name

    def start(self) -> None:
        """The app is running: draw what the view models hold now."""

    def entered(self) -> None:
        """The user switched to this screen."""

    def restyle(self) -> None:
        """The theme changed: redraw what carries colours in data rather than in KV bindings."""

    def close(self) -> None:
        """The app stops: no widget may be built from here on, so stop listening."""
        for unbind in self._unbind:
            unbind()
        self._unbind = []
