"""The frame every screen sits in: the top bar, the navigation, the screens and the toast line.

The navigation lists every registered screen (``clients.app.ui.screens.SCREENS``). On a wide window (from
``WIDE`` dp, the size of a tablet in landscape or a desktop window) it is a sidebar beside the screens; on a
narrow one (a phone) it is a drawer that the top bar's Menu button opens over the screen. The same list moves
between the two when the window crosses the width, so a resize switches live. A toast belongs to the screen it
was said on: switching screens clears it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kivy.clock import Clock
from kivy.metrics import dp
from kivy.properties import BooleanProperty, ColorProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.modalview import ModalView
from kivy.uix.widget import Widget

from clients.app.ui.screens.base import Context, ScreenController, route
from clients.app.ui.theme import STATE_COLOUR

WIDE = 720  # dp: from this window width on, the navigation is a sidebar (and chat shows its sessions list)
TOAST_SECONDS = 4.0
DRAWER_WIDTH = 260  # dp


class NavEntry(Button):
    """One screen in the navigation."""

    screen_name = StringProperty("")
    current = BooleanProperty(False)


class NavList(BoxLayout):
    """The entries for the registered screens, top to bottom; the same widget serves sidebar and drawer."""

    def __init__(self, entries: Iterable[tuple[str, str]], on_pick: Callable[[str], None], **kw: Any) -> None:
        super().__init__(**kw)
        self.entries: dict[str, NavEntry] = {}
        for name, title in entries:
            entry = NavEntry(text=title, screen_name=name)
            entry.bind(on_release=lambda e: on_pick(e.screen_name))
            self.add_widget(entry)
            self.entries[name] = entry
        self.add_widget(Widget())  # takes the rest of the height, so the entries stay at the top

    def mark(self, current: str) -> None:
        for name, entry in self.entries.items():
            entry.current = name == current


class Drawer(ModalView):
    """The navigation over the screen from the left edge; a tap beside it closes it."""

    def on_touch_down(self, touch: Any) -> bool:
        if self.children and not self.children[0].collide_point(*touch.pos):
            self.dismiss()
            return True
        return bool(super().on_touch_down(touch))


class Shell(BoxLayout):
    """Owns the screens' controllers (by name), shows one at a time, and draws the top bar from the connection
    (its light and state) and the robots (E-STOP while any moves)."""

    wide = BooleanProperty(False)
    current = StringProperty("")
    toast = StringProperty("")
    link_text = StringProperty("not connected")
    link_colour = ColorProperty((0.5, 0.5, 0.5, 1))
    moving = BooleanProperty(False)

    def __init__(self, ctx: Context, controllers: Iterable[ScreenController], **kw: Any) -> None:
        super().__init__(**kw)
        self.ctx = ctx
        self.controllers = {c.name: c for c in controllers}
        for c in self.controllers.values():
            self.ids.screens.add_widget(c.screen)
        self.nav = NavList([(c.name, c.title) for c in self.controllers.values()], self.show, orientation="vertical")
        self.drawer = Drawer(auto_dismiss=False, anchor_x="left", background_color=(0, 0, 0, 0))
        self._toast_event: Any = None
        views = ctx.views
        self._unbind = [
            route(views.conn, {"state": self.restyle, "daemon": self.restyle}),
            route(views.status, {"moving": lambda _ids: setattr(self, "moving", bool(views.status.moving))}),
        ]
        self.bind(wide=lambda *_: self._arrange())
        self._arrange()
        self.show(next(iter(self.controllers)))

    @property
    def drawer_open(self) -> bool:
        return self.drawer.parent is not None

    def _arrange(self) -> None:
        """Put the navigation in the sidebar (wide) or the drawer (narrow)."""
        if self.nav.parent is not None:
            self.nav.parent.remove_widget(self.nav)
        if self.wide:
            self.drawer.dismiss(animation=False)
            self.nav.size_hint_x, self.nav.width = 1, dp(DRAWER_WIDTH)
            self.ids.sidebar.add_widget(self.nav)
        else:
            self.nav.size_hint_x, self.nav.width = None, dp(DRAWER_WIDTH)
            self.drawer.add_widget(self.nav)

    def open_drawer(self) -> None:
        # Not faded in: it closes without a fade too, and a fade-in still running when a tap closes it would
        # race the next open (the view reads an alpha of 0 as "remove me").
        if not self.wide:
            self.drawer.open(animation=False)

    def show(self, name: str) -> None:
        """Switch to screen ``name`` (closing the drawer); a toast said on the screen left behind goes."""
        controller = self.controllers[name]
        self.drawer.dismiss(animation=False)
        if name != self.current:
            self.say("")
        self.ids.screens.current = name
        self.current = name
        self.nav.mark(name)
        controller.entered()

    def say(self, text: str) -> None:
        """Show ``text`` below the screen for a few seconds; an empty text clears the toast now."""
        self.toast = text
        if self._toast_event is not None:
            self._toast_event.cancel()
            self._toast_event = None
        if text:
            self._toast_event = Clock.schedule_once(lambda _dt: self.say(""), TOAST_SECONDS)

    def restyle(self, _detail: Any = None) -> None:
        """The top bar's light and text, from the connection (and the theme, for the light's colour)."""
        conn = self.ctx.views.conn
        name = conn.daemon.name if conn.daemon else "no daemon"
        self.link_text = f"{name} · {conn.state}"
        self.link_colour = self.ctx.colour(STATE_COLOUR.get(conn.state, "muted"))

    def estop(self) -> None:
        self.ctx.go(self.ctx.views.status.estop("all"))

    def close(self) -> None:
        """The app stops: stop listening, close the drawer, and let each screen stop too."""
        for unbind in self._unbind:
            unbind()
        self._unbind = []
        self.drawer.dismiss(animation=False)
        for c in self.controllers.values():
            c.close()
