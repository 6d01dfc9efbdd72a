"""What the app remembers on the device: paired daemons, its own CURVE key pair and the user's settings.

Everything else (sessions, modules, robots) lives on the daemon, so the app can be closed at any moment. The
files are small JSON documents in the app's user data dir, written atomically (temp file + rename) so a phone
killing the app mid-write never leaves a half file; the key pair file is readable by the owner only.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus.auth import KeyPair, check_key, fingerprint, generate_keypair, load_keypair, save_keypair
from bus.errors import BadRequest

if TYPE_CHECKING:
    from bus.discovery import Record

THEMES = ("dark", "light")
FONT_SIZES = (12, 28)  # the smallest and largest font size (sp) the settings screen offers


@dataclass
class DaemonEntry:
    """A daemon the user connected to or paired with; ``server_public`` set means CURVE is used."""

    name: str
    rpc: str
    events: str
    server_public: str | None = None
    node_id: str | None = None
    last_used: float = 0.0

    @property
    def server_fingerprint(self) -> str | None:
        return fingerprint(self.server_public) if self.server_public else None

    @property
    def address(self) -> str:
        return self.rpc if self.events == _next_port(self.rpc) else f"{self.rpc} {self.events}"


def _next_port(rpc: str) -> str:
    head, _, port = rpc.rpartition(":")
    return f"{head}:{int(port) + 1}" if port.isdigit() else ""


@dataclass
class Settings:
    theme: str = "dark"
    font_size: int = 15
    last_daemon: str | None = None

    def validate(self) -> Settings:
        if self.theme not in THEMES:
            raise BadRequest(f"theme must be one of {list(THEMES)}, got {self.theme!r}")
        if not isinstance(self.font_size, int) or not FONT_SIZES[0] <= self.font_size <= FONT_SIZES[1]:
            raise BadRequest(f"font size must be {FONT_SIZES[0]}–{FONT_SIZES[1]}, got {self.font_size!r}")
        return self


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path, default: Any) -> Any:
    """The file's JSON, or ``default`` when it is missing or unreadable (a broken file must not brick the app)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


class AppStore:
    """The app's files under ``root``: ``daemons.json``, ``settings.json`` and ``device.key``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.daemons_path = self.root / "daemons.json"
        self.settings_path = self.root / "settings.json"
        self.key_path = self.root / "device.key"

    # -- daemons --------------------------------------------------------------------------------------------
    def daemons(self) -> list[DaemonEntry]:
        """Remembered daemons, most recently used first."""
        raw = _read_json(self.daemons_path, [])
        names = {f.name for f in fields(DaemonEntry)}
        out = []
        for item in raw if isinstance(raw, list) else []:
            if isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("name", "rpc", "events")):
                out.append(DaemonEntry(**{k: v for k, v in item.items() if k in names}))
        return sorted(out, key=lambda d: -d.last_used)

    def get(self, name: str) -> DaemonEntry | None:
        return next((d for d in self.daemons() if d.name == name), None)

    def remember(self, entry: DaemonEntry, *, touch: bool = True) -> DaemonEntry:
        """Add or replace (by name) a daemon; ``touch`` marks it the most recently used."""
        if entry.server_public is not None:
            check_key(entry.server_public, "the daemon's public key")
        if touch:
            entry.last_used = time.time()
        others = [d for d in self.daemons() if d.name != entry.name]
        _write_json(self.daemons_path, [asdict(d) for d in [entry, *others]])
        return entry

    def forget(self, name: str) -> bool:
        kept = [d for d in self.daemons() if d.name != name]
        removed = len(kept) != len(self.daemons())
        if removed:
            _write_json(self.daemons_path, [asdict(d) for d in kept])
        return removed

    # -- settings -------------------------------------------------------------------------------------------
    def settings(self) -> Settings:
        raw = _read_json(self.settings_path, {})
        s = Settings()
        if isinstance(raw, dict):
            for f in fields(Settings):
                if f.name in raw:
                    setattr(s, f.name, raw[f.name])
        try:
            return s.validate()
        except BadRequest:
            return Settings(last_daemon=s.last_daemon if isinstance(s.last_daemon, str) else None)

    def save_settings(self, s: Settings) -> Settings:
        _write_json(self.settings_path, asdict(s.validate()))
        return s

    # -- identity -------------------------------------------------------------------------------------------
    def device_keypair(self) -> KeyPair:
        """This device's CURVE key pair, created on first use; a daemon admits the device by its public key."""
        try:
            return load_keypair(self.key_path)
        except FileNotFoundError:
            pass
        kp = generate_keypair()
        save_keypair(self.key_path, kp)
        return kp


@dataclass
class DiscoveredDaemon:
    """A daemon seen on the LAN (filled in by the discovery code); it becomes a ``DaemonEntry`` once chosen."""

    name: str
    rpc: str
    events: str
    node_id: str | None = None
    server_public: str | None = None
    fingerprint: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> DaemonEntry:
        return DaemonEntry(self.name, self.rpc, self.events, self.server_public, self.node_id)

    @classmethod
    def from_record(cls, record: Record) -> DiscoveredDaemon:
        """What LAN discovery (``bus.discovery.Record``) found, as the Connect screen lists it."""
        return cls(
            name=record.node_id,
            rpc=record.rpc,
            events=record.events,
            node_id=record.node_id,
            server_public=record.key or None,
            fingerprint=record.fingerprint or None,
            info={"version": record.version, "address": record.address, "via": record.via, **record.caps},
        )
