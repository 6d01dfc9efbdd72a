"""The settings screen: the daemon's address, the theme and the font size, kept on the device."""

from __future__ import annotations

from bus.errors import BusError
from clients.app.store import FONT_SIZES, THEMES, AppStore, DaemonEntry, Settings
from clients.app.viewmodels.address import parse_address
from clients.app.viewmodels.base import Observable
from clients.app.viewmodels.connection import ConnectionVM


class SettingsVM(Observable):
    """Notifies ``theme`` and ``font_size``; ``set_address`` reconnects to the new address."""

    def __init__(self, store: AppStore, conn: ConnectionVM) -> None:
        super().__init__()
        self.store = store
        self.conn = conn
        self.settings: Settings = store.settings()

    @property
    def theme(self) -> str:
        return self.settings.theme

    @property
    def font_size(self) -> int:
        return self.settings.font_size

    def set_theme(self, theme: str) -> None:
        if theme not in THEMES:
            self.set_error(f"theme must be one of {', '.join(THEMES)}")
            return
        self.settings.theme = theme
        self._save("theme", theme)

    def set_font_size(self, size: int) -> None:
        size = max(FONT_SIZES[0], min(FONT_SIZES[1], int(size)))
        self.settings.font_size = size
        self._save("font_size", size)

    def _save(self, what: str, value: object) -> None:
        self.settings.last_daemon = self.store.settings().last_daemon
        self.store.save_settings(self.settings)
        self.notify(what, value)

    async def set_address(self, address: str) -> bool:
        """Point the current daemon entry (or a new one) at ``address`` and reconnect; False if it is invalid."""
        try:
            rpc, events = parse_address(address)
        except BusError as exc:
            self.set_error(exc.message)
            return False
        current = self.conn.daemon
        if current is None:
            entry = DaemonEntry(address.strip(), rpc, events)
        else:
            entry = DaemonEntry(current.name, rpc, events, current.server_public, current.node_id)
        await self.conn.connect(entry)
        return True
