"""The overlay window: small, borderless, always on top, dark and translucent, showing ``OverlayModel.visible()``.

Kivy is imported here only (``pip install enigma[app]``), and its window settings must be made before
``kivy.core.window`` is imported, so everything happens inside ``run_window``. The app runs on the same asyncio
loop as the MQTT client (``App.async_run``). Per-pixel transparency over the game needs a compositing window
manager; without one the background is a dark strip. With no display at all, ``SDL_VIDEODRIVER=offscreen``
renders (``screenshot`` saves the first frame that shows a line and exits: how the tests check it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from clients.overlay.model import Line, OverlayModel

COLOURS = {"answer": (1.0, 1.0, 1.0, 1.0), "spoken": (0.6, 0.85, 1.0, 1.0), "game": (1.0, 0.8, 0.3, 1.0)}
PREFIX = {"answer": "", "spoken": "\u00bb ", "game": "Playing: "}  # glyphs the default font (Roboto) has


async def run_window(
    model: OverlayModel,
    stop: asyncio.Event,
    *,
    width: int = 560,
    height: int = 200,
    screenshot: str | None = None,
) -> str | None:
    """Show the overlay until ``stop`` is set (or the window is closed); returns the screenshot path, if taken."""
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
    from kivy.config import Config

    Config.set("graphics", "borderless", "1")
    Config.set("graphics", "resizable", "0")
    Config.set("graphics", "always_on_top", "1")
    Config.set("graphics", "width", str(width))
    Config.set("graphics", "height", str(height))
    Config.set("input", "mouse", "mouse,disable_multitouch")
    from kivy.app import App
    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.uix.boxlayout import BoxLayout
    from kivy.uix.label import Label

    taken: list[str] = []

    class OverlayApp(App):
        title = "Enigma overlay"

        def build(self) -> Any:
            Window.clearcolor = (0.05, 0.05, 0.08, 0.55)
            with contextlib.suppress(Exception):
                Window.always_on_top = True
            self.box = BoxLayout(orientation="vertical", padding=12, spacing=4)
            self.shown: list[Line] = []
            Clock.schedule_interval(self.refresh, 0.2)
            return self.box

        def refresh(self, _dt: float) -> None:
            if stop.is_set():
                self.stop()
                return
            lines = model.visible(time.time())
            if lines != self.shown:
                self.shown = lines
                self.box.clear_widgets()
                for line in lines:
                    label = Label(
                        text=PREFIX[line.kind] + line.text,
                        color=COLOURS[line.kind],
                        font_size="15sp",
                        halign="left",
                        valign="middle",
                        shorten=True,
                        shorten_from="right",
                    )
                    label.bind(size=label.setter("text_size"))
                    self.box.add_widget(label)
                if screenshot and lines:
                    Clock.schedule_once(self.snap, 0.3)  # after the labels have been laid out and drawn

        def snap(self, _dt: float) -> None:
            if screenshot and not taken:
                taken.append(Window.screenshot(screenshot))
                stop.set()

    await OverlayApp().async_run(async_lib="asyncio")
    return taken[0] if taken else None
