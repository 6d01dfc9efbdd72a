"""The status screen: the daemon's facts (``sys.status``, ``llm.stats``), what it is still loading, and the
robots with a Stop each and Stop all."""

from __future__ import annotations

from typing import Any

from kivy.clock import Clock
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

from clients.app.ui.screens.base import Context, EnigmaScreen, ScreenController
from clients.app.ui.widgets import Card

REFRESH = 10.0  # seconds between sys.status reads while the screen is shown


class StatusRow(BoxLayout):
    label = StringProperty("")
    value = StringProperty("")


class RobotItem(Card):
    robot_id = StringProperty("")
    line = StringProperty("")
    moving = BooleanProperty(False)


class StatusScreen(EnigmaScreen):
    robots_text = StringProperty("")
    robots_on = BooleanProperty(False)


def robot_line(robot: dict[str, Any]) -> str:
    parts = ["online" if robot.get("online", True) else "offline", str(robot.get("state", "?"))]
    battery = robot.get("battery")
    if battery is not None:
        parts.append(f"battery {battery:.0%}" if battery <= 1 else f"battery {battery}")
    if robot.get("driver"):
        parts.append(f"driver {robot['driver']}")
    return " · ".join(parts)


class StatusController(ScreenController):
    name = "status"
    title = "Status"
    screen_class = StatusScreen

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.status = ctx.views.status
        self._age = 0.0  # seconds since the last sys.status reply; uptime and "loading for" count on from it
        self._ticker: Any = None
        self.listen(
            self.status,
            {
                "status": self._status,
                "llm": self._fill_facts,
                "robots": self._fill_robots,
                "telemetry": self._fill_robots,
                "moving": self._fill_robots,
                "estop": lambda robot_id: ctx.say(f"E-stop sent ({robot_id})"),
            },
        )

    def start(self) -> None:
        self._ticker = Clock.schedule_interval(self._tick, 1.0)

    def close(self) -> None:
        if self._ticker is not None:  # its next tick may still come before the loop ends
            self._ticker.cancel()
        super().close()

    def entered(self) -> None:
        if self.ctx.views.conn.client is not None:
            self.refresh()

    def restyle(self) -> None:
        self._fill_robots()

    def _tick(self, _dt: float) -> None:
        if not self.shown:
            return
        self._age += 1.0
        if self._age >= REFRESH and self.ctx.views.conn.client is not None:
            self.refresh()
        else:
            self._fill_facts()

    def _status(self, _status: Any) -> None:
        self._age = 0.0
        self._fill_facts()

    def _fill_facts(self, _detail: Any = None) -> None:
        box = self.screen.ids.facts
        box.clear_widgets()
        for label, value in self.status.summary():
            box.add_widget(StatusRow(label=label, value=value))

    def _fill_robots(self, _detail: Any = None) -> None:
        box = self.screen.ids.robots
        box.clear_widgets()
        for rid, robot in sorted(self.status.robots.items()):
            box.add_widget(RobotItem(robot_id=rid, line=robot_line(robot), moving=rid in self.status.moving))
        self.screen.robots_on = self.status.robots_available
        if not self.status.robots_available:
            self.screen.robots_text = "The robots module is off."
        else:
            n = len(self.status.robots)
            self.screen.robots_text = f"{n} robot{'s' if n != 1 else ''}, {len(self.status.moving)} moving"

    def refresh(self) -> None:
        self._age = 0.0
        self.ctx.go(self.status.refresh())

    def estop(self, robot_id: str = "all") -> None:
        self.ctx.go(self.status.estop(robot_id))

    kv = """
#:import dp kivy.metrics.dp
#:import controller_of clients.app.ui.screens.base.controller_of

<StatusRow>:
    size_hint_y: None
    height: max(dp(26), value_label.texture_size[1])
    spacing: dp(8)
    Label:
        text: root.label
        color: app.c_muted
        font_size: app.font_size * 0.9
        size_hint_x: None
        width: dp(140)
        text_size: self.width, None
        halign: "left"
    Label:
        id: value_label
        text: root.value
        color: app.c_fg
        font_size: app.font_size * 0.9
        text_size: self.width, None
        halign: "left"

<RobotItem>:
    BoxLayout:
        size_hint_y: None
        height: dp(40)
        spacing: dp(8)
        Label:
            text: root.robot_id
            bold: True
            color: app.c_fg
            font_size: app.font_size
            text_size: self.size
            halign: "left"
            valign: "middle"
        Danger:
            text: "Stop"
            size_hint_x: None
            width: dp(72)
            on_release: controller_of(self).estop(root.robot_id)
    TextBase:
        text: root.line
        color: app.c_warn if root.moving else app.c_muted
        font_size: app.font_size * 0.85

<StatusScreen>:
    ScrollView:
        do_scroll_x: False
        BoxLayout:
            orientation: "vertical"
            size_hint_y: None
            height: self.minimum_height
            padding: dp(10)
            spacing: dp(10)
            Card:
                Heading:
                    text: "Daemon"
                BoxLayout:
                    id: facts
                    orientation: "vertical"
                    size_hint_y: None
                    height: self.minimum_height
            Card:
                BoxLayout:
                    size_hint_y: None
                    height: dp(40)
                    Heading:
                        text: "Robots"
                        height: dp(40)
                    Danger:
                        text: "Stop all"
                        size_hint_x: None
                        width: dp(96) if root.robots_on else 0
                        opacity: 1 if root.robots_on else 0
                        disabled: not root.robots_on
                        on_release: root.controller.estop()
                Muted:
                    text: root.robots_text
                BoxLayout:
                    id: robots
                    orientation: "vertical"
                    size_hint_y: None
                    height: self.minimum_height
                    spacing: dp(6)
            Flat:
                text: "Refresh"
                on_release: root.controller.refresh()

"""
