"""The app's two dialogs: rename a conversation, and confirm a module toggle after saying what it would do.

Each takes what it shows and a callback for the user's decision; what the decision does is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kivy.factory import Factory
from kivy.metrics import dp
from kivy.uix.popup import Popup

from clients.app.viewmodels import ModulePlan


def _buttons(ok_text: str, on_ok: Callable[[], Any], popup: Popup) -> Any:
    row = Factory.BoxLayout(size_hint_y=None, height=dp(40), spacing=dp(8))
    cancel = Factory.Flat(text="Cancel")
    ok = Factory.Accent(text=ok_text)
    cancel.bind(on_release=lambda *_: popup.dismiss())
    ok.bind(on_release=lambda *_: (popup.dismiss(), on_ok()))
    row.add_widget(cancel)
    row.add_widget(ok)
    return row


def rename(title: str, on_save: Callable[[str], Any]) -> Popup:
    """Ask for a new title; ``on_save`` gets it stripped (possibly empty)."""
    box = Factory.BoxLayout(orientation="vertical", spacing=dp(8), padding=dp(8))
    popup = Popup(title="Rename conversation", content=box, size_hint=(0.9, None), height=dp(180))
    field = Factory.Field(text=title)
    box.add_widget(field)
    box.add_widget(_buttons("Save", lambda: on_save(field.text.strip()), popup))
    popup.open()
    return popup


def confirm_toggle(plan: ModulePlan, on_confirm: Callable[[], Any]) -> Popup:
    """Dependencies that load too, modules in the way, modules that need it, memory — then the user decides."""
    box = Factory.BoxLayout(orientation="vertical", spacing=dp(8), padding=dp(8))
    verb = "Turn on" if plan.action == "load" else "Turn off"
    sentences = plan.summary()
    popup = Popup(title=f"{verb} {plan.name}?", content=box, size_hint=(0.9, None))
    popup.height = dp(130) + dp(34) * len(sentences)
    for sentence in sentences:
        box.add_widget(Factory.PopupText(text=sentence))
    ok_text = verb if plan.ok else f"{verb} anyway"  # the daemon has the last word; it may know better
    box.add_widget(_buttons(ok_text, on_confirm, popup))
    popup.open()
    return popup
