"""The Python side of the shared KV rules in ``enigma.kv``: widget classes with the properties their rules read.
Rows that belong to one screen live in that screen's module (``clients/app/ui/screens/``)."""

from __future__ import annotations

from kivy.properties import ColorProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.widget import Widget


class Dot(Widget):
    """A status light (connection, module state)."""

    colour = ColorProperty((0.5, 0.5, 0.5, 1))


class Card(BoxLayout):
    """A rounded panel that groups one topic on a screen."""
