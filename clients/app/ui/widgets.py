"""The Python side of the KV rules in ``enigma.kv``: widget classes with the properties their rules read."""

from __future__ import annotations

from typing import Any

from kivy.properties import BooleanProperty, ColorProperty, NumericProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.recycleview.views import RecycleDataViewBehavior
from kivy.uix.screenmanager import Screen
from kivy.uix.widget import Widget


class Dot(Widget):
    """A status light (connection, module state)."""

    colour = ColorProperty((0.5, 0.5, 0.5, 1))


class Root(BoxLayout):
    """Top bar, the screens, the toast line and the tab bar."""


class MessageItem(RecycleDataViewBehavior, BoxLayout):
    """One chat message; recycled by the conversation's RecycleView, so it holds no state of its own."""

    index = NumericProperty(0)
    role = StringProperty("assistant")
    text = StringProperty("")
    note = StringProperty("")
    streaming = BooleanProperty(False)

    def refresh_view_attrs(self, rv: Any, index: int, data: dict[str, Any]) -> Any:
        self.index = index
        return super().refresh_view_attrs(rv, index, data)


class SessionItem(BoxLayout):
    session_id = StringProperty("")
    title = StringProperty("")
    current = BooleanProperty(False)


class ModuleItem(BoxLayout):
    name = StringProperty("")
    description = StringProperty("")
    state = StringProperty("")
    colour = ColorProperty((0.5, 0.5, 0.5, 1))
    action = StringProperty("")
    facts = StringProperty("")
    error = StringProperty("")
    pending = BooleanProperty(False)


class Card(BoxLayout):
    """A rounded panel that groups one topic on a screen."""


class StatusRow(BoxLayout):
    label = StringProperty("")
    value = StringProperty("")


class RobotItem(Card):
    robot_id = StringProperty("")
    line = StringProperty("")
    moving = BooleanProperty(False)


class DaemonButton(BoxLayout):
    """A daemon to connect to: a remembered one (with Forget) or one found on the LAN."""

    title = StringProperty("")
    subtitle = StringProperty("")
    daemon_name = StringProperty("")
    discovered = BooleanProperty(False)


class ChatScreen(Screen):
    show_sessions = BooleanProperty(False)


class ModulesScreen(Screen):
    pass


class StatusScreen(Screen):
    pass


class SettingsScreen(Screen):
    pass


class ConnectScreen(Screen):
    pass
