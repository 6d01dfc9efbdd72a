"""Helpers for the operations tests: take a backup over the bus, upload one, and doctor archives.

Archives are altered the way real damage or tampering would alter them (bytes flipped, the tail cut off, a
member replaced with or without fixing the manifest), so the daemon's checks are tested against the failure,
not against a flag.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients.sdk import Client
from tests.conftest import DaemonProcess

PART = 1024 * 1024


async def chat_to_end(c: Client, body: dict[str, Any]) -> dict[str, Any]:
    """One ``chat.send`` run to its end; returns the ``end`` body."""
    async with c.stream("chat.send", body) as s:
        async for _ in s:
            pass
    assert s.result is not None
    return s.result


async def take_backup(c: Client) -> tuple[bytes, dict[str, Any]]:
    """``backup.create`` → (the archive's bytes, the ``end`` body)."""
    parts = []
    async with c.stream("backup.create", {}) as s:
        async for chunk in s:
            assert isinstance(chunk["data"], bytes)
            assert len(chunk["data"]) <= PART
            parts.append(chunk["data"])
    assert s.result is not None
    return b"".join(parts), s.result


async def upload(c: Client, data: bytes, upload_id: str | None = None) -> str:
    upload_id = upload_id or os.urandom(6).hex()
    for seq, start in enumerate(range(0, len(data), PART)):
        await c.call("backup.upload", {"upload_id": upload_id, "seq": seq, "data": data[start : start + PART]})
    return upload_id


async def restore(c: Client, data: bytes) -> dict[str, Any]:
    upload_id = await upload(c, data)
    return await c.call("backup.restore", {"upload_id": upload_id}, timeout=60.0)


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar:
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def pack(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def repack(data: bytes, edit: Callable[[dict[str, bytes]], None], *, fix_manifest: bool = True) -> bytes:
    """Unpack, let ``edit`` change the members, and pack again; ``fix_manifest`` recomputes the checksums
    (a consistent archive with altered content) instead of leaving them stale (a tampered one)."""
    files = members(data)
    edit(files)
    if fix_manifest:
        manifest = json.loads(files["manifest.json"])
        manifest["files"] = {
            n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
            for n, b in files.items()
            if n != "manifest.json"
        }
        files["manifest.json"] = json.dumps(manifest).encode()
    return pack(files)


def edit_db(files: dict[str, bytes], tmp: Path, sql: str) -> None:
    """Run ``sql`` on the archive's enigma.db."""
    import sqlite3

    path = tmp / f"edit-{os.urandom(4).hex()}.db"
    path.write_bytes(files["enigma.db"])
    db = sqlite3.connect(path)
    db.executescript(sql)
    db.commit()
    db.close()
    files["enigma.db"] = path.read_bytes()


def rpc_of(d: DaemonProcess) -> dict[str, str]:
    return {"rpc": d.rpc, "events": d.events}
