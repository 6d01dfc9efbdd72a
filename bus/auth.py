"""CURVE keys, the allow-list that maps a client's public key to a role, and the loopback rule.

Loopback needs no keys; anything else needs CURVE (DESIGN.md "Security"). The daemon has one key pair; a
client is admitted when its public key is on the allow-list, and the list entry's role (``admin``, ``user``,
``device``) decides which methods it may call. Keys are Z85 strings, as ZeroMQ prints and takes them. The
allow-list is a small JSON file an operator edits with ``enigmad keys allow|revoke``; the server re-reads it
when the file changes, so revoking a key needs no restart for new connections.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus.errors import BadRequest
from bus.service import ROLES

_Z85_KEY_LEN = 40


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: str
    secret: str

    def __repr__(self) -> str:  # never print the secret key into a log or a traceback
        return f"KeyPair(public={self.public!r}, secret=<hidden>)"


def generate_keypair() -> KeyPair:
    import zmq

    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode("ascii"), secret.decode("ascii"))


def check_key(key: str, what: str = "public key") -> str:
    """Return ``key`` if it is a well-formed Z85 CURVE key, else raise ``BadRequest`` saying why."""
    import zmq.utils.z85  # a submodule: ``import zmq`` alone does not load it

    if not isinstance(key, str) or len(key) != _Z85_KEY_LEN:
        raise BadRequest(f"{what} must be a {_Z85_KEY_LEN}-character Z85 string")
    try:
        zmq.utils.z85.decode(key.encode("ascii"))
    except (ValueError, KeyError, UnicodeEncodeError) as exc:
        raise BadRequest(f"{what} is not valid Z85: {key!r}") from exc
    return key


def _atomic_write(path: Path, text: str, mode: int) -> None:
    """Write via a temp file and rename so a crash never leaves half a key file or allow-list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_keypair(path: str | os.PathLike[str], kp: KeyPair) -> None:
    """Write the pair as JSON readable by the owner only (mode 0600)."""
    _atomic_write(Path(path), json.dumps({"public": kp.public, "secret": kp.secret}) + "\n", 0o600)


def load_keypair(path: str | os.PathLike[str]) -> KeyPair:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read key pair {p}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("public"), str) or not isinstance(data.get("secret"), str):
        raise BadRequest(f"key pair file {p} must hold a JSON object with 'public' and 'secret' strings")
    return KeyPair(check_key(data["public"]), check_key(data["secret"], "secret key"))


def fingerprint(public: str) -> str:
    """A short form two people can compare by voice: first 16 hex digits of sha256, in groups of four."""
    h = hashlib.sha256(public.encode("ascii")).hexdigest()[:16]
    return ":".join(h[i : i + 4] for i in range(0, 16, 4))


class AllowList:
    """The keys the server admits, each with a role and a human name, kept in a JSON file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: list[dict[str, str]] = []
        self._roles: dict[str, str] = {}
        self._mtime: int | None = None

    def load(self) -> AllowList:
        """Read the file (a missing file is an empty list); returns self for chaining."""
        try:
            st = self.path.stat()
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._set([], None)
            return self
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot read allow-list {self.path}: {exc}") from exc
        if not isinstance(raw, list):
            raise BadRequest(f"allow-list {self.path} must hold a JSON list of {{key, role, name}} objects")
        entries = []
        for i, e in enumerate(raw):
            if not isinstance(e, dict) or not isinstance(e.get("key"), str) or e.get("role") not in ROLES:
                raise BadRequest(f"allow-list {self.path}: entry {i} needs 'key' and a 'role' in {list(ROLES)}")
            entries.append({"key": e["key"], "role": e["role"], "name": str(e.get("name", ""))})
        self._set(entries, st.st_mtime_ns)
        return self

    def reload_if_changed(self) -> bool:
        """Re-read the file when its modification time changed; cheap enough to call per handshake."""
        try:
            mtime: int | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime:
            return False
        self.load()
        return True

    def save(self) -> None:
        _atomic_write(self.path, json.dumps(self._entries, indent=2) + "\n", 0o600)
        self._mtime = self.path.stat().st_mtime_ns

    def _set(self, entries: list[dict[str, str]], mtime: int | None) -> None:
        self._entries = entries
        self._roles = {e["key"]: e["role"] for e in entries}
        self._mtime = mtime

    def add(self, key: str, role: str, name: str = "") -> None:
        """Admit ``key`` with ``role``; re-adding a key replaces its role and name."""
        check_key(key)
        if role not in ROLES:
            raise BadRequest(f"role must be one of {list(ROLES)}, got {role!r}")
        self._entries = [e for e in self._entries if e["key"] != key]
        self._entries.append({"key": key, "role": role, "name": name})
        self._roles = {e["key"]: e["role"] for e in self._entries}

    def remove(self, key_or_name: str) -> bool:
        """Drop every entry whose key or name equals ``key_or_name``; True when something was removed."""
        before = len(self._entries)
        self._entries = [e for e in self._entries if key_or_name not in (e["key"], e["name"])]
        self._roles = {e["key"]: e["role"] for e in self._entries}
        return len(self._entries) != before

    def role_of(self, key: str) -> str | None:
        return self._roles.get(key)

    def entries(self) -> list[dict[str, str]]:
        return [dict(e, fingerprint=fingerprint(e["key"])) for e in self._entries]


@dataclass(slots=True)
class ServerAuth:
    """What a server needs to speak CURVE: its own key pair and who it lets in."""

    keypair: KeyPair
    allow: AllowList


@dataclass(frozen=True, slots=True)
class ClientCurve:
    """What a client needs to speak CURVE: the server's public key and its own pair."""

    server_public: str
    keypair: KeyPair


def _host_of(endpoint: str) -> tuple[str, str]:
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise BadRequest(f"endpoint {endpoint!r} has no transport (expected e.g. tcp://127.0.0.1:7700)")
    if scheme != "tcp":
        return scheme, rest
    rest = rest.rsplit(";", 1)[-1]  # tcp://source;dest — the address that matters is the destination
    host = rest[1 : rest.find("]")] if rest.startswith("[") else rest.rsplit(":", 1)[0]  # [::1]:7700
    return scheme, host


def endpoint_host(endpoint: str) -> str:
    """The host of a tcp endpoint (``tcp://[::1]:7700`` → ``::1``; of ``tcp://src;dst`` the destination's)."""
    return _host_of(endpoint)[1]


def is_loopback(endpoint: str) -> bool:
    """True when nobody outside this host can reach ``endpoint``.

    ``ipc://`` and ``inproc://`` are host-local by nature; a tcp endpoint counts when its host is a loopback
    address or a name that resolves only to loopback addresses. ``*`` and ``0.0.0.0`` are not loopback.
    """
    scheme, host = _host_of(endpoint)
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    if host in ("*", ""):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs: set[Any] = {ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos}
    return bool(addrs) and all(a.is_loopback for a in addrs)
