"""The app's screens, in the order the navigation lists them. A new screen is one module here (its controller,
screen class and KV rules) and one line in ``SCREENS``; the first entry is the screen the app opens on."""

from __future__ import annotations

from clients.app.ui.screens.base import ScreenController
from clients.app.ui.screens.chat import ChatController
from clients.app.ui.screens.connect import ConnectController
from clients.app.ui.screens.modules import ModulesController
from clients.app.ui.screens.settings import SettingsController
from clients.app.ui.screens.status import StatusController

SCREENS: tuple[type[ScreenController], ...] = (
    ChatController,
    ModulesController,
    StatusController,
    SettingsController,
    ConnectController,
)
