"""``backup.*``: take a backup of the running daemon, and restore one into it without a restart.

``backup.create`` streams a ``tar.gz`` (see ``daemon.backup``) as ``chunk``s ``{"data": bytes}`` of at most
1 MiB and ends with ``{"manifest", "size", "sha256"}``, so ``enigma backup create`` writes the file where the
user is, also for a daemon on another host. Restoring is two steps, because a request is bounded in size:
``backup.upload {upload_id, seq, data}`` stages the parts (in order, from seq 0) in the data dir, bounded in
total by ``daemon.backup_max_bytes``; ``backup.restore {upload_id}`` validates the staged archive completely
and only then asks the daemon to swap its state live (``daemon.services.LiveRestore.restore``, the one
operation these handlers may perform on the daemon):

1. every other request in flight is ended with ``cancelled`` (a streaming chat reply keeps what it had, marked
   incomplete) — requests that arrive during the swap may fail with ``unknown_method`` or ``internal``;
2. every module is unloaded, without changing the user's wishes, and the store is closed;
3. the database is kept as ``enigma.db.before-restore`` and the restored one moved in, with the state files;
4. the store is reopened (and migrated), the modules come back as at a start — by the restored wishes — and
   ``sys.restored`` is published.

A restored server key or node id is used from the next restart (the reply says ``restart_needed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bus.errors import BadRequest, BusError, Busy, NotFound, TooLarge, Unavailable
from bus.service import Call
from daemon import backup
from daemon.handlers import Core
from daemon.hub import Hub
from daemon.manager import human_bytes
from daemon.services import LiveRestore
from daemon.topics import SYS_RESTORED

log = logging.getLogger("enigma.backup")

STAGING: Final = "restore-staging"
WORK: Final = "backup-work"
UPLOAD_IDLE: Final = 3600.0  # seconds after which a half-finished upload is discarded
_UPLOAD_ID: Final = r"^[A-Za-z0-9_-]{1,64}$"

CREATE_SCHEMA: Final = {"type": "object"}
UPLOAD_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "upload_id": {"type": "string", "pattern": _UPLOAD_ID},
        "seq": {"type": "integer", "minimum": 0},
    },
    "required": ["upload_id", "seq", "data"],
}
RESTORE_SCHEMA: Final = {
    "type": "object",
    "properties": {"upload_id": {"type": "string", "pattern": _UPLOAD_ID}},
    "required": ["upload_id"],
}


@dataclass
class _Upload:
    path: Path
    next_seq: int = 0
    size: int = 0
    touched: float = 0.0


class BackupService:
    """The handlers, with the staged uploads. ``core.live`` is the running daemon, as a ``LiveRestore``."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.uploads: dict[str, _Upload] = {}
        self._job: asyncio.Task[dict[str, Any]] | None = None  # the restore running now, if any
        self._staging_cleared = False

    @property
    def live(self) -> LiveRestore:
        if self.core.live is None:
            raise Unavailable("the daemon is starting or stopping; try again in a moment")
        return self.core.live

    # -- backup.create --------------------------------------------------------------------------------------
    async def create(self, call: Call) -> dict[str, Any]:
        """Stream a backup archive of the live daemon as chunks ``{"data": bytes}`` (≤ 1 MiB); ends with
        ``{"manifest", "size", "sha256"}``. The daemon keeps serving while the database is copied."""
        live = self.live
        work = self.core.data_dir / WORK / os.urandom(6).hex()
        try:
            archive, manifest = await asyncio.to_thread(
                backup.create_archive,
                live.store_path(),
                live.state_paths(),
                work,
                node_id=self.core.node_id,
                version=self.core.version,
            )
            digest = hashlib.sha256()
            size = 0
            f = await asyncio.to_thread(open, archive, "rb")
            try:
                while block := await asyncio.to_thread(f.read, backup.CHUNK):
                    digest.update(block)
                    size += len(block)
                    await call.emit({"data": block})
            finally:
                f.close()
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("backup streamed", extra={"kv": {"bytes": size, "schema": manifest["schema"]}})
        return {"manifest": manifest, "size": size, "sha256": digest.hexdigest()}

    # -- backup.upload --------------------------------------------------------------------------------------
    async def upload(self, call: Call) -> dict[str, Any]:
        """Stage part ``seq`` (0, 1, 2 … in order) of the archive ``upload_id``: ``{upload_id, seq, data}``;
        replies ``{"upload_id", "received"}``. Above ``daemon.backup_max_bytes`` in total: ``too_large``."""
        b = call.body
        data = b["data"]
        if not isinstance(data, bytes | bytearray):
            raise BadRequest("backup.upload: data: must be binary (msgpack bin)", {"field": "data"})
        if len(data) > backup.CHUNK:
            raise TooLarge(f"backup.upload: a part may hold at most {backup.CHUNK} bytes, got {len(data)}")
        upload_id, seq = b["upload_id"], b["seq"]
        await self._clear_staging_once()
        self._expire_idle()
        up = self.uploads.get(upload_id)
        if up is None:
            if seq != 0:
                raise NotFound(f"no upload {upload_id!r} in progress (start it with seq 0)")
            up = self.uploads[upload_id] = _Upload(self._staging / f"{upload_id}.tar.gz")
            await asyncio.to_thread(up.path.unlink, True)
        if seq != up.next_seq:
            raise BadRequest(f"backup.upload {upload_id!r}: expected part {up.next_seq}, got {seq}", {"field": "seq"})
        limit = self._limit()
        staged = sum(u.size for u in self.uploads.values())
        if staged + len(data) > limit:
            await self._drop(upload_id)
            raise TooLarge(
                f"the backup is larger than this daemon accepts ({human_bytes(limit)}, daemon.backup_max_bytes); "
                "the upload was discarded",
                {"limit": limit},
            )
        await asyncio.to_thread(_append, up.path, bytes(data))
        up.next_seq += 1
        up.size += len(data)
        up.touched = time.monotonic()
        return {"upload_id": upload_id, "received": up.size}

    def _limit(self) -> int:
        return self.live.backup_max_bytes

    @property
    def _staging(self) -> Path:
        return self.core.data_dir / STAGING

    async def _clear_staging_once(self) -> None:
        """Uploads a previous run left behind are useless (their state is gone with it): remove them once."""
        if not self._staging_cleared:
            await asyncio.to_thread(shutil.rmtree, self._staging, True)
            await asyncio.to_thread(self._staging.mkdir, 0o700, True, True)
            self._staging_cleared = True

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for upload_id, up in list(self.uploads.items()):
            if now - up.touched > UPLOAD_IDLE:
                del self.uploads[upload_id]
                with contextlib.suppress(FileNotFoundError):
                    up.path.unlink()

    async def _drop(self, upload_id: str) -> None:
        up = self.uploads.pop(upload_id, None)
        if up is not None:
            await asyncio.to_thread(up.path.unlink, True)

    # -- backup.restore -------------------------------------------------------------------------------------
    async def restore(self, call: Call) -> dict[str, Any]:
        """Validate the uploaded archive ``{upload_id}`` and, only if it passes, replace the daemon's state with
        it live. ``bad_request`` for a corrupt, truncated or altered archive, ``conflict`` for one made by a newer
        enigmad (naming the area and versions); the daemon's data is untouched then. Other requests in flight
        are cancelled during the swap. Replies ``{"restored", "modules", "before_restore", "restart_needed"}``."""
        upload_id = call.body["upload_id"]
        up = self.uploads.pop(upload_id, None)
        if up is None:
            raise NotFound(f"no upload {upload_id!r}: send the archive with backup.upload first")
        if self._job is not None and not self._job.done():
            await asyncio.to_thread(up.path.unlink, True)
            raise Busy("another restore is running")
        job = self._job = asyncio.ensure_future(self._restore(up, upload_id, asyncio.current_task()))
        job.add_done_callback(_retrieve)
        # Shielded: a client that vanishes (or a cancel) mid-swap must not leave the daemon without its store.
        return await asyncio.shield(job)

    async def _restore(self, up: _Upload, upload_id: str, request: asyncio.Task[Any] | None) -> dict[str, Any]:
        work = self._staging / f"{upload_id}.d"
        try:
            restorable = await asyncio.to_thread(backup.validate_archive, up.path, work)
            return await self._swap(restorable, request)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
            await asyncio.to_thread(up.path.unlink, True)

    async def _swap(self, restorable: backup.Restorable, request: asyncio.Task[Any] | None) -> dict[str, Any]:
        done = await self.live.restore(restorable, keep=request)
        info = restorable.summary()
        self.core.hub.publish(SYS_RESTORED, {"node_id": self.core.node_id, "backup": info, "modules": done.modules})
        log.warning("backup restored", extra={"kv": {"from_node": info["node_id"], "modules": ",".join(done.modules)}})
        return {
            "restored": info,
            "modules": done.modules,
            "state_files": done.state_files,
            "before_restore": str(done.before_restore) if done.before_restore else None,
            "restart_needed": done.restart_needed,
        }


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A restore whose requester went away still ends somewhere: log its failure instead of losing it."""
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if not isinstance(exc, BusError):
            log.error("restore failed", exc_info=exc)


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as f:
        f.write(data)


def register(hub: Hub, core: Core) -> list[Callable[[], None]]:
    svc = BackupService(core)
    return [
        hub.register("backup.create", svc.create, stream=True, access="admin", schema=CREATE_SCHEMA),
        hub.register("backup.upload", svc.upload, access="admin", schema=UPLOAD_SCHEMA),
        hub.register("backup.restore", svc.restore, access="admin", schema=RESTORE_SCHEMA),
    ]
