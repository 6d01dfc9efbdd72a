"""The modules screen: every module with its state, live from ``module.state`` events, and a toggle that first
says what it would do.

The cards sit in a plain BoxLayout in a ScrollView, not a RecycleView: a card grows with its wrapped
description, facts and error, and a RecycleView lays rows out at the height their data gives (120 dp by
default), so a card taller than that at 360 dp wide drew over the next one. A daemon has about ten modules,
so every card can be a widget; each is kept by name and updated in place.
"""

from __future__ import annotations

from typing import Any

from kivy.properties import BooleanProperty, ColorProperty, StringProperty
from kivy.uix.boxlayout import BoxLayout

from clients.app.ui import dialogs
from clients.app.ui.screens.base import Context, EnigmaScreen, ScreenController
from clients.app.ui.theme import MODULE_COLOUR
from clients.app.viewmodels import ModuleRow
from clients.app.viewmodels.modules import format_bytes


class ModuleItem(BoxLayout):
    name = StringProperty("")
    description = StringProperty("")
    state = StringProperty("")
    colour = ColorProperty((0.5, 0.5, 0.5, 1))
    action = StringProperty("")
    facts = StringProperty("")
    error = StringProperty("")
    pending = BooleanProperty(False)


class ModulesScreen(EnigmaScreen):
    modules_text = StringProperty("")


def module_facts(row: ModuleRow) -> str:
    facts = []
    if row.depends:
        facts.append("needs " + ", ".join(row.depends))
    if row.conflicts:
        facts.append("conflicts with " + ", ".join(row.conflicts))
    if row.slot:
        facts.append(f"slot {row.slot}")
    if row.memory_estimate:
        facts.append(f"memory ~{format_bytes(row.memory_estimate)}")
    return " · ".join(facts)


class ModulesController(ScreenController):
    name = "modules"
    title = "Modules"
    screen_class = ModulesScreen

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.modules = ctx.views.modules
        self.items: dict[str, ModuleItem] = {}
        self.listen(self.modules, {"rows": self._fill, "pending": self._fill})

    def restyle(self) -> None:
        self._fill()

    def _fill(self, _detail: Any = None) -> None:
        box = self.screen.ids.list
        names = [r.name for r in self.modules.rows]
        if names != list(self.items):
            box.clear_widgets()
            self.items = {name: ModuleItem(name=name) for name in names}
            for item in self.items.values():
                box.add_widget(item)
        for r in self.modules.rows:
            item = self.items[r.name]
            item.description = r.description
            item.state = r.state
            item.colour = self.ctx.colour(MODULE_COLOUR.get(r.state, "muted"))
            item.action = "Turn off" if r.on else "Turn on"
            item.facts = module_facts(r)
            item.error = r.error or ""
            item.pending = r.name in self.modules.pending
        on = sum(1 for r in self.modules.rows if r.on)
        memory = self.modules.memory_in_use
        in_use = f" · about {format_bytes(memory)} in use" if memory else ""
        self.screen.modules_text = f"{on} of {len(self.modules.rows)} modules on{in_use}"

    def ask_toggle(self, name: str) -> None:
        """Show what the toggle would do (dependencies, conflicts, memory) and act only on confirmation."""
        dialogs.confirm_toggle(self.modules.plan(name), lambda: self.ctx.go(self.modules.toggle(name)))

    kv = """
#:import dp kivy.metrics.dp
#:import controller_of clients.app.ui.screens.base.controller_of

<ModuleItem>:
    orientation: "vertical"
    size_hint_y: None
    height: self.minimum_height
    padding: dp(8), dp(4)
    Card:
        BoxLayout:
            size_hint_y: None
            height: dp(40)
            spacing: dp(8)
            Dot:
                colour: root.colour
                pos_hint: {"center_y": 0.5}
            Label:
                text: root.name
                bold: True
                color: app.c_fg
                font_size: app.font_size
                text_size: self.size
                halign: "left"
                valign: "middle"
            Label:
                text: root.state
                color: root.colour
                font_size: app.font_size * 0.85
                size_hint_x: None
                width: dp(80)
                text_size: self.size
                halign: "right"
                valign: "middle"
            FlatBase:
                text: root.action
                size_hint_x: None
                width: dp(84)
                disabled: root.pending
                background_color: app.c_accent if root.action == "Turn on" else app.c_raised
                color: (1, 1, 1, 1) if root.action == "Turn on" else app.c_fg
                on_release: controller_of(self).ask_toggle(root.name)
        Muted:
            text: root.description
        Muted:
            text: root.facts
            height: (self.texture_size[1]) if root.facts else 0
        Label:
            text: root.error
            color: app.c_danger
            font_size: app.font_size * 0.85
            text_size: self.width, None
            halign: "left"
            size_hint_y: None
            height: self.texture_size[1] if root.error else 0

<ModulesScreen>:
    BoxLayout:
        orientation: "vertical"
        BoxLayout:
            size_hint_y: None
            height: dp(44)
            padding: dp(14), dp(4)
            Text:
                text: root.modules_text
                height: dp(36)
        ScrollView:
            do_scroll_x: False
            bar_width: dp(4)
            BoxLayout:
                id: list
                orientation: "vertical"
                size_hint_y: None
                height: self.minimum_height
"""
