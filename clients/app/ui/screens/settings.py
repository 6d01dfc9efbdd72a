"""The settings screen: the daemon's address (reconnects on Apply), theme, font size, this device's key."""

from __future__ import annotations

from typing import Any

from kivy.properties import StringProperty

from clients.app.ui.screens.base import Context, EnigmaScreen, ScreenController


class SettingsScreen(EnigmaScreen):
    address_text = StringProperty("")
    device_text = StringProperty("")


class SettingsController(ScreenController):
    name = "settings"
    title = "Settings"
    screen_class = SettingsScreen

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.settings = ctx.views.settings
        self.conn = ctx.views.conn
        self.listen(self.conn, {"daemon": self._daemon})

    def start(self) -> None:
        public, fp = self.conn.device_identity()
        self.screen.device_text = f"Key fingerprint {fp}\nPublic key {public}\nApp data in {self.views.store.root}"

    def _daemon(self, _entry: Any) -> None:
        if self.conn.daemon is not None:
            self.screen.address_text = self.conn.daemon.address

    def apply_address(self, address: str) -> None:
        self.ctx.go(self.settings.set_address(address))

    def open_connect(self) -> None:
        self.ctx.show("connect")

    def set_theme(self, theme: str) -> None:
        self.settings.set_theme(theme)

    def set_font_size(self, value: float) -> None:
        if int(value) != self.settings.font_size:
            self.settings.set_font_size(int(value))

    kv = """
#:import dp kivy.metrics.dp

<SettingsScreen>:
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
                    text: "Daemon address"
                Muted:
                    text: "host, host:port or tcp://host:port (events on the next port), or two endpoints"
                Field:
                    id: address
                    text: root.address_text
                    hint_text: "192.168.1.20:7700"
                    on_text_validate: root.controller.apply_address(self.text)
                BoxLayout:
                    size_hint_y: None
                    height: dp(40)
                    spacing: dp(8)
                    Accent:
                        text: "Apply"
                        on_release: root.controller.apply_address(address.text)
                    Flat:
                        text: "Pair / other daemons"
                        on_release: root.controller.open_connect()
            Card:
                Heading:
                    text: "Theme"
                BoxLayout:
                    size_hint_y: None
                    height: dp(40)
                    spacing: dp(8)
                    ToggleButton:
                        text: "Dark"
                        group: "theme"
                        allow_no_selection: False
                        state: "down" if app.theme == "dark" else "normal"
                        background_normal: ""
                        background_down: ""
                        background_color: app.c_accent if self.state == "down" else app.c_raised
                        color: app.c_fg
                        font_size: app.font_size
                        on_release: root.controller.set_theme("dark")
                    ToggleButton:
                        text: "Light"
                        group: "theme"
                        allow_no_selection: False
                        state: "down" if app.theme == "light" else "normal"
                        background_normal: ""
                        background_down: ""
                        background_color: app.c_accent if self.state == "down" else app.c_raised
                        color: app.c_fg
                        font_size: app.font_size
                        on_release: root.controller.set_theme("light")
            Card:
                Heading:
                    text: "Font size: %d" % app.font_points
                Slider:
                    min: 12
                    max: 28
                    step: 1
                    value: app.font_points
                    size_hint_y: None
                    height: dp(40)
                    on_value: root.controller.set_font_size(self.value)
            Card:
                Heading:
                    text: "This device"
                Muted:
                    text: root.device_text

"""
