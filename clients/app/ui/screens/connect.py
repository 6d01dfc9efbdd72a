"""The connect screen: daemons found on the LAN, remembered daemons, connect by address, and pairing."""

from __future__ import annotations

from typing import Any

from kivy.factory import Factory
from kivy.properties import BooleanProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

from bus.errors import BusError
from clients.app.store import DaemonEntry
from clients.app.ui.screens.base import Context, EnigmaScreen, ScreenController

DEFAULT_ADDRESS = "127.0.0.1:7700"


class DaemonButton(BoxLayout):
    """A daemon to connect to: a remembered one (with Forget) or one found on the LAN."""

    title = StringProperty("")
    subtitle = StringProperty("")
    daemon_name = StringProperty("")
    discovered = BooleanProperty(False)


class ConnectScreen(EnigmaScreen):
    link_long = StringProperty("not connected")
    address_text = StringProperty(DEFAULT_ADDRESS)
    discovered_text = StringProperty("Nothing found yet: discovery lists daemons announcing themselves on the LAN.")
    pairing_text = StringProperty("Enter the daemon's address and its public key (enigmad keys show), then tap Pair.")
    allow_command = StringProperty("")


class ConnectController(ScreenController):
    name = "connect"
    title = "Connect"
    screen_class = ConnectScreen

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.conn = ctx.views.conn
        self.store = ctx.views.store
        self.listen(self.conn, {"state": self._link, "daemon": self._link, "discovered": self._fill_discovered})

    def start(self) -> None:
        self._link(None)
        self._fill_remembered()

    def entered(self) -> None:
        self._fill_remembered()

    def _link(self, _detail: Any) -> None:
        conn = self.conn
        name = conn.daemon.name if conn.daemon else "no daemon"
        self.screen.link_long = f"{name}: {conn.state} — {conn.detail}"
        if conn.daemon is not None:
            self.screen.address_text = conn.daemon.address

    def _fill_remembered(self) -> None:
        box = self.screen.ids.remembered
        box.clear_widgets()
        for d in self.store.daemons():
            keys = f" · paired {d.server_fingerprint}" if d.server_public else ""
            box.add_widget(DaemonButton(title=d.name, subtitle=f"{d.address}{keys}", daemon_name=d.name))
        if not box.children:
            box.add_widget(Factory.Muted(text="None yet."))

    def _fill_discovered(self, _detail: Any = None) -> None:
        box = self.screen.ids.discovered
        box.clear_widgets()
        found = self.conn.discovered
        for d in found:
            fp = f" · key {d.fingerprint}" if d.fingerprint else ""
            box.add_widget(DaemonButton(title=d.name, subtitle=f"{d.rpc}{fp}", daemon_name=d.name, discovered=True))
        if found:
            self.screen.discovered_text = f"{len(found)} found"

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
            self.ctx.go(self._switch(entry))

    async def _switch(self, entry: DaemonEntry) -> None:
        self.views.chat.new_conversation()
        await self.conn.connect(entry)
        self.ctx.show("chat")

    def connect_manual(self, address: str, name: str) -> None:
        try:
            entry = self.conn.add_manual(address, name)
        except BusError as exc:
            self.ctx.say(exc.message)
            return
        self.ctx.go(self._switch(entry))

    def pair(self, name: str, address: str, server_key: str) -> None:
        try:
            info = self.conn.pair(name, address, server_key)
        except BusError as exc:
            self.ctx.say(exc.message)
            return
        self.screen.pairing_text = (
            f"This device: {info.device_fingerprint}\nDaemon {info.entry.name}: {info.server_fingerprint}\n"
            "Check that the daemon's fingerprint matches `enigmad keys show` on its host, then admit this "
            "device there with:"
        )
        self.screen.allow_command = info.allow_command
        self._fill_remembered()
        self.ctx.go(self.conn.connect(info.entry))

    def forget(self, name: str) -> None:
        self.store.forget(name)
        self._fill_remembered()

    kv = """
#:import dp kivy.metrics.dp
#:import controller_of clients.app.ui.screens.base.controller_of

<DaemonButton>:
    size_hint_y: None
    height: dp(56)
    spacing: dp(6)
    Button:
        background_normal: ""
        background_down: ""
        background_color: app.c_raised
        on_release: controller_of(self).connect_to(root.daemon_name, root.discovered)
        BoxLayout:
            orientation: "vertical"
            pos: self.parent.pos
            size: self.parent.size
            padding: dp(10), dp(4)
            Label:
                text: root.title
                bold: True
                color: app.c_fg
                font_size: app.font_size * 0.95
                text_size: self.size
                halign: "left"
                valign: "middle"
                shorten: True
            Label:
                text: root.subtitle
                color: app.c_muted
                font_size: app.font_size * 0.75
                text_size: self.size
                halign: "left"
                valign: "middle"
                shorten: True
    Button:
        text: "Forget"
        size_hint_x: None
        width: 0 if root.discovered else dp(64)
        opacity: 0 if root.discovered else 1
        disabled: root.discovered
        background_normal: ""
        background_color: 0, 0, 0, 0
        color: app.c_danger
        font_size: app.font_size * 0.8
        on_release: controller_of(self).forget(root.daemon_name)

<ConnectScreen>:
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
                    text: "Connection"
                Text:
                    text: root.link_long
            Card:
                Heading:
                    text: "Found on this network"
                Muted:
                    text: root.discovered_text
                BoxLayout:
                    id: discovered
                    orientation: "vertical"
                    size_hint_y: None
                    height: self.minimum_height
                    spacing: dp(6)
            Card:
                Heading:
                    text: "Remembered daemons"
                BoxLayout:
                    id: remembered
                    orientation: "vertical"
                    size_hint_y: None
                    height: self.minimum_height
                    spacing: dp(6)
            Card:
                Heading:
                    text: "Connect by address"
                Field:
                    id: address
                    hint_text: "address, e.g. 192.168.1.20 or pi.local:7700"
                    text: root.address_text
                Field:
                    id: name
                    hint_text: "name (optional)"
                Field:
                    id: server_key
                    hint_text: "daemon public key (enigmad keys show) to pair"
                BoxLayout:
                    size_hint_y: None
                    height: dp(40)
                    spacing: dp(8)
                    Accent:
                        text: "Connect"
                        on_release: root.controller.connect_manual(address.text, name.text)
                    Flat:
                        id: pair
                        text: "Pair"
                        on_release: root.controller.pair(name.text, address.text, server_key.text)
            Card:
                Heading:
                    text: "Pairing"
                Text:
                    text: root.pairing_text
                TextInput:
                    text: root.allow_command
                    readonly: True
                    multiline: True
                    size_hint_y: None
                    height: dp(64) if root.allow_command else 0
                    opacity: 1 if root.allow_command else 0
                    background_normal: ""
                    background_active: ""
                    background_color: app.c_input
                    foreground_color: app.c_fg
                    font_size: app.font_size * 0.8
"""
