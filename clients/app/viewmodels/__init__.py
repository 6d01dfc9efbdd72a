"""View models: the app's logic as plain asyncio Python over the SDK, with no Kivy imports.

Each view model holds what one screen shows, changes it from the daemon's replies and events, and tells
listeners what changed (``Observable.bind``). The Kivy layer only draws that state and calls methods; the
tests drive the same objects against a real daemon without a window.
"""

from clients.app.viewmodels.address import parse_address
from clients.app.viewmodels.base import Observable
from clients.app.viewmodels.chat import ChatLine, ChatVM
from clients.app.viewmodels.connection import ConnectionVM, PairingInfo
from clients.app.viewmodels.modules import ModulePlan, ModuleRow, ModulesVM
from clients.app.viewmodels.settings import SettingsVM
from clients.app.viewmodels.status import StatusVM

__all__ = [
    "ChatLine",
    "ChatVM",
    "ConnectionVM",
    "ModulePlan",
    "ModuleRow",
    "ModulesVM",
    "Observable",
    "PairingInfo",
    "SettingsVM",
    "StatusVM",
    "parse_address",
]
