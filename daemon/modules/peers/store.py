"""The daemons (and clients) this one is paired with, kept in ``<data_dir>/peers.json``.

The allow-list (``bus.auth.AllowList``) decides who may *call* us; this file remembers who *we* call: each
paired daemon's node id, public key and endpoints, the role we gave it on our allow-list and the role it gave
us. A client paired with us has no endpoints and gets no link.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bus.errors import BadRequest


@dataclass
class PeerEntry:
    node_id: str
    key: str
    name: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)
    role: str = "user"  # what it may do here (its role on our allow-list)
    their_role: str = ""  # what we may do there ("" for a client, which serves nothing)
    paired_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_daemon(self) -> bool:
        return bool(self.endpoints.get("rpc"))


class PeerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._peers: dict[str, PeerEntry] = {}

    def load(self) -> PeerStore:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self._peers = {}
            return self
        except (OSError, ValueError) as exc:
            raise BadRequest(f"cannot read the peer list {self.path}: {exc}") from exc
        if not isinstance(raw, list):
            raise BadRequest(f"the peer list {self.path} must hold a JSON list")
        peers = {}
        for i, e in enumerate(raw):
            try:
                p = PeerEntry(**e)
            except TypeError as exc:
                raise BadRequest(f"the peer list {self.path}: entry {i} is malformed: {exc}") from exc
            peers[p.node_id] = p
        self._peers = peers
        return self

    def save(self) -> None:
        """Write via a temp file and rename, owner-only: a crash never leaves half a peer list."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps([p.to_dict() for p in self._peers.values()], indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put(self, peer: PeerEntry) -> None:
        self._peers[peer.node_id] = peer

    def find(self, ref: str) -> PeerEntry | None:
        """By node id, name or public key."""
        for p in self._peers.values():
            if ref in (p.node_id, p.name, p.key):
                return p
        return None

    def remove(self, node_id: str) -> PeerEntry | None:
        return self._peers.pop(node_id, None)

    def all(self) -> list[PeerEntry]:
        return sorted(self._peers.values(), key=lambda p: p.node_id)

    def keys(self) -> set[str]:
        return {p.key for p in self._peers.values()}
