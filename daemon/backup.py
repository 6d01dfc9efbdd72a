"""Backup archives of a daemon's state: made from a live store, checked before anything is restored.

An archive is a ``tar.gz`` holding ``manifest.json`` (first), ``enigma.db`` and the small state files under
``state/`` (the server key pair, the client allow-list, the model store's index — never model weights, which
are large and can be added again). The database is copied with SQLite's online backup API from its own
connection, so a daemon that keeps writing (a chat reply streaming in) is never paused and the copy is one
consistent snapshot; the copy must pass ``PRAGMA integrity_check`` before it is packed.

Restoring validates everything before touching the data dir: the gzip stream reads to its end (a flipped or
missing byte fails its CRC), only the expected regular files are present, every file matches the sha256 the
manifest lists, the database passes ``integrity_check`` and no schema area is at a version newer than this
enigmad knows. A failure is a ``bad_request`` (corrupt, truncated, tampered) or a ``conflict`` (newer schema)
that says what is wrong. Every function here blocks (file and SQLite I/O): the daemon calls them in a thread.

``enigmad restore FILE`` (``restore_offline``) is the path for a stopped daemon; a running one restores through
``backup.restore`` (``daemon.handlers.backup``), which swaps its store live.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from bus.errors import BadRequest, Conflict, Unavailable
from daemon.config import Config
from daemon.store import DB_NAME, Store

FORMAT: Final = 1  # the archive layout; a reader refuses a higher one
MANIFEST: Final = "manifest.json"
DB_MEMBER: Final = DB_NAME
KEY_MEMBER: Final = "state/server.key"
ALLOW_MEMBER: Final = "state/allow.json"
MODEL_INDEX_MEMBER: Final = "state/models/index.json"
# Where engine.model_store.ModelStore keeps its index, relative to the data dir (not imported: it pulls torch).
MODEL_INDEX: Final = Path("models") / "index.json"
BEFORE_RESTORE: Final = ".before-restore"
CHUNK: Final = 1024 * 1024  # bytes per streamed part, both directions
_READ: Final = 1024 * 1024
DISK_RESERVE: Final = 64 * 1024 * 1024  # never fill the data dir's disk to the last byte while unpacking


def state_paths(config: Config) -> dict[str, Path]:
    """Archive member → where that file lives for this config (key and allow-list paths are configurable)."""
    return {
        KEY_MEMBER: config.key_file,
        ALLOW_MEMBER: config.allow_file,
        MODEL_INDEX_MEMBER: config.data_dir / MODEL_INDEX,
    }


# -- the database --------------------------------------------------------------------------------------------
def snapshot_db(src: Path, dest: Path) -> None:
    """Copy the live database at ``src`` to ``dest`` with the online backup API, then check the copy.

    The source is read through a connection of its own (never the daemon's aiosqlite one); in WAL mode the
    daemon's writers carry on while the copy reads one consistent snapshot.
    """
    if not src.is_file():
        raise Unavailable(f"there is no database at {src} to back up")
    source = sqlite3.connect(src, timeout=30.0)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
            problems = integrity_problems(target)
        finally:
            target.close()
    finally:
        source.close()
    if problems:
        raise Unavailable(f"the copy of {src} failed its integrity check: {'; '.join(problems[:3])}")


def integrity_problems(db: sqlite3.Connection) -> list[str]:
    """What ``PRAGMA integrity_check`` found; empty when the database is sound."""
    rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows


def schema_versions(db: sqlite3.Connection) -> dict[str, int]:
    """Per-area schema versions recorded in ``schema_migrations`` (raises ``sqlite3.Error`` if it is missing)."""
    rows = db.execute("SELECT area, MAX(version) FROM schema_migrations GROUP BY area ORDER BY area").fetchall()
    return {str(area): int(v) for area, v in rows}


def checkpoint(db_path: Path) -> None:
    """Fold a leftover WAL (a daemon that was killed) into the main file, so the file alone holds all data."""
    if not db_path.is_file():
        return
    db = sqlite3.connect(db_path, timeout=5.0)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def db_in_use(db_path: Path) -> bool:
    """True when another process has the database open — a running enigmad keeps it open in WAL mode, which
    holds a shared lock for as long as the connection lives, so an exclusive lock cannot be taken."""
    if not db_path.is_file():
        return False
    db = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("BEGIN EXCLUSIVE")
        db.execute("COMMIT")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        db.close()


# -- creating ------------------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            h.update(block)
    return h.hexdigest()


def create_archive(
    db_path: Path, state: dict[str, Path], work_dir: Path, *, node_id: str, version: str
) -> tuple[Path, dict[str, Any]]:
    """Snapshot ``db_path``, gather the ``state`` files that exist, and pack ``work_dir/backup.tar.gz``.

    Returns the archive's path and its manifest (which is also the archive's first member).
    """
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db_copy = work_dir / DB_MEMBER
    snapshot_db(db_path, db_copy)
    db = sqlite3.connect(db_copy)
    try:
        versions = schema_versions(db)
    finally:
        db.close()
    members: dict[str, Path] = {DB_MEMBER: db_copy}
    members.update({name: path for name, path in state.items() if path.is_file()})
    created = time.time()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "enigma_version": version,
        "node_id": node_id,
        "created": created,
        "schema": versions,
        "files": {name: {"sha256": sha256_file(p), "size": p.stat().st_size} for name, p in members.items()},
    }
    archive = work_dir / "backup.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        tar.addfile(_tar_info(MANIFEST, len(data), created), io.BytesIO(data))
        for name, path in members.items():
            with open(path, "rb") as f:
                tar.addfile(_tar_info(name, path.stat().st_size, created), f)
    db_copy.unlink()
    return archive, manifest


def _tar_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o600
    return info


# -- validating ----------------------------------------------------------------------------------------------
@dataclass
class Restorable:
    """An archive that passed every check, unpacked into ``work_dir``; nothing live has been touched yet."""

    work_dir: Path
    db: Path
    manifest: dict[str, Any]
    schema: dict[str, int]  # from the database itself, not the manifest
    state: dict[str, Path] = field(default_factory=dict)  # member name → unpacked file
    unchecked: list[str] = field(default_factory=list)  # areas this enigmad has not registered (yet)

    def summary(self) -> dict[str, Any]:
        return {
            "node_id": self.manifest.get("node_id"),
            "created": self.manifest.get("created"),
            "enigma_version": self.manifest.get("enigma_version"),
            "schema": self.schema,
            "unchecked_areas": self.unchecked,
            "files": sorted(self.manifest.get("files", {})),
        }


_ALLOWED: Final = frozenset({MANIFEST, DB_MEMBER, KEY_MEMBER, ALLOW_MEMBER, MODEL_INDEX_MEMBER})


def validate_archive(
    archive: Path, work_dir: Path, known_version: Callable[[str], int] = Store.known_version
) -> Restorable:
    """Check ``archive`` completely and unpack it into ``work_dir`` (created; left for the caller to remove).

    ``known_version(area)`` is the newest schema version this enigmad knows for an area, 0 for an area it has
    not registered (a module not loaded since start): such areas are reported in ``unchecked`` and checked by
    the module's own migration when it loads.
    """
    _check_gzip(archive)
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    files: dict[str, Path] = {}
    digests: dict[str, str] = {}
    room = shutil.disk_usage(work_dir).free - DISK_RESERVE
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                room -= member.size
                if room < 0:
                    raise Unavailable(
                        f"not enough free disk space in {work_dir.parent} to unpack the backup "
                        f"({member.name!r} alone is {member.size} bytes)"
                    )
                _unpack(tar, member, work_dir, files, digests)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise Unavailable(f"the disk of {work_dir.parent} filled up while unpacking the backup") from exc
        raise BadRequest(f"the backup archive cannot be read: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BadRequest(f"the backup archive cannot be read: {exc}") from exc
    manifest = _read_manifest(files)
    _check_files(manifest, files, digests)
    db_path = files[DB_MEMBER]
    schema = _check_db(db_path)
    unchecked = []
    for area, version in sorted(schema.items()):
        known = known_version(area)
        if known == 0:
            unchecked.append(area)
        elif version > known:
            raise Conflict(
                f"the backup's {area!r} schema is at version {version}, but this enigmad knows only up to "
                f"{known}: it was made by a newer enigmad — upgrade this one before restoring it",
                {"area": area, "backup_version": version, "known_version": known},
            )
    state = {name: path for name, path in files.items() if name not in (MANIFEST, DB_MEMBER)}
    return Restorable(work_dir, db_path, manifest, schema, state, unchecked)


def _check_gzip(archive: Path) -> None:
    """Read the whole gzip stream: its CRC and length trailer catch flipped bytes and truncation anywhere."""
    try:
        with gzip.open(archive, "rb") as g:
            while g.read(_READ):
                pass
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise BadRequest(f"the backup archive is corrupt or truncated (not a complete gzip file: {exc})") from exc


def _unpack(
    tar: tarfile.TarFile, member: tarfile.TarInfo, work_dir: Path, files: dict[str, Path], digests: dict[str, str]
) -> None:
    name = member.name
    if name not in _ALLOWED or not member.isfile():
        raise BadRequest(f"the backup archive holds an unexpected entry {name!r}; it was not made by enigma")
    if name in files:
        raise BadRequest(f"the backup archive holds {name!r} twice")
    src = tar.extractfile(member)
    assert src is not None  # a regular file always has data
    dest = work_dir / name.replace("/", "__")
    h = hashlib.sha256()
    with src, open(dest, "wb") as out:
        while block := src.read(_READ):
            h.update(block)
            out.write(block)
    files[name] = dest
    digests[name] = h.hexdigest()


def _read_manifest(files: dict[str, Path]) -> dict[str, Any]:
    if MANIFEST not in files:
        raise BadRequest("the backup archive has no manifest.json; it was not made by enigma backup")
    try:
        manifest = json.loads(files[MANIFEST].read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the backup's manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BadRequest("the backup's manifest.json has no 'files' map")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise BadRequest(f"the backup's manifest.json has no valid format number (got {fmt!r})")
    if fmt > FORMAT:
        raise Conflict(
            f"the backup is in archive format {fmt}, but this enigmad reads up to format {FORMAT}: upgrade enigmad",
            {"format": fmt, "known_format": FORMAT},
        )
    return manifest


def _check_files(manifest: dict[str, Any], files: dict[str, Path], digests: dict[str, str]) -> None:
    listed: dict[str, Any] = manifest["files"]
    if DB_MEMBER not in files:
        raise BadRequest("the backup archive has no enigma.db")
    for name in files:
        if name != MANIFEST and name not in listed:
            raise BadRequest(f"the backup archive holds {name!r}, which its manifest does not list")
    for name, entry in listed.items():
        if name not in files:
            raise BadRequest(f"the backup archive lacks {name!r}, which its manifest lists (truncated?)")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if expected != digests[name]:
            raise BadRequest(
                f"checksum mismatch for {name!r} in the backup: the manifest says {expected}, "
                f"the file is {digests[name]} — the archive was altered or damaged",
                {"file": name},
            )


def _check_db(db_path: Path) -> dict[str, int]:
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            problems = integrity_problems(db)
            if problems:
                raise BadRequest(
                    f"the backup's database failed its integrity check: {'; '.join(problems[:3])}",
                    {"problems": problems[:10]},
                )
            return schema_versions(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise BadRequest(f"the backup's enigma.db is not a usable enigma database: {exc}") from exc


# -- applying (the store must be closed) ---------------------------------------------------------------------
def swap_db_files(db_path: Path, new_db: Path) -> Path | None:
    """Keep the current database as ``enigma.db.before-restore`` and move ``new_db`` into its place.

    The old WAL is folded in first and the ``-wal``/``-shm`` files removed, so SQLite never replays the old
    database's log onto the restored one. Returns the kept copy (None when there was no database).
    """
    kept: Path | None = None
    if db_path.is_file():
        checkpoint(db_path)
        kept = db_path.with_name(db_path.name + BEFORE_RESTORE)
        os.replace(db_path, kept)
    try:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                db_path.with_name(db_path.name + suffix).unlink()
        db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.move(new_db, db_path)
    except BaseException:
        if kept is not None:
            os.replace(kept, db_path)
        raise
    return kept


def undo_swap(db_path: Path, kept: Path | None) -> None:
    """Put the database kept by ``swap_db_files`` back (the restored one failed to open)."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            db_path.with_name(db_path.name + suffix).unlink()
    if kept is not None:
        os.replace(kept, db_path)
    else:
        with contextlib.suppress(FileNotFoundError):
            db_path.unlink()


def install_state_files(restorable: Restorable, targets: dict[str, Path]) -> list[str]:
    """Write the archive's state files to ``targets`` (mode 0600); a file that differs is kept as
    ``<name>.before-restore``. Files the backup does not hold are left as they are. Returns what changed."""
    changed = []
    for name, src in sorted(restorable.state.items()):
        dest = targets[name]
        data = src.read_bytes()
        if dest.is_file():
            if dest.read_bytes() == data:
                continue
            shutil.copy2(dest, dest.with_name(dest.name + BEFORE_RESTORE))
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = dest.with_name(dest.name + ".restoring")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        changed.append(name)
    return changed


def match_owner(data_dir: Path, paths: list[Path]) -> None:
    """Run as root on a service's data dir (owned by its user), give the restored files to that user: a
    root-owned 0600 database would stop the daemon from starting."""
    if os.geteuid() != 0:
        return
    st = data_dir.stat()
    if st.st_uid == 0:
        return
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, st.st_uid, st.st_gid)


# -- enigmad restore FILE (the daemon is stopped) -------------------------------------------------------------
def restore_offline(config: Config, archive: Path, out: TextIO, err: TextIO) -> int:
    """Restore ``archive`` into ``config.data_dir`` while no daemon runs there; returns the exit code."""
    from bus.errors import BusError

    db_path = config.data_dir / DB_NAME
    if not archive.is_file():
        print(f"enigmad: no backup file at {archive}", file=err)
        return 2
    if db_in_use(db_path):
        print(
            f"enigmad: a daemon is running on {config.data_dir} (its database is in use): restore through it with "
            "`enigma backup restore FILE`, or stop it first (systemctl stop enigmad)",
            file=err,
        )
        return 1
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = config.data_dir / f".restore-{os.urandom(4).hex()}"
    try:
        try:
            restorable = validate_archive(archive, work)
        except BusError as exc:
            print(f"enigmad: refusing to restore {archive}: {exc.message} ({exc.code})", file=err)
            return 1
        if db_in_use(db_path):  # a daemon started while we were checking
            print(f"enigmad: a daemon started on {config.data_dir} meanwhile; nothing was changed", file=err)
            return 1
        kept = swap_db_files(db_path, restorable.db)
        targets = state_paths(config)
        changed = install_state_files(restorable, targets)
        match_owner(config.data_dir, [db_path, *(targets[name] for name in changed)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = restorable.summary()
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["created"] or 0))
    print(f"restored the backup of node {info['node_id']} made {created} into {config.data_dir}", file=out)
    print(f"schema: {', '.join(f'{a} v{v}' for a, v in info['schema'].items())}", file=out)
    if kept is not None:
        print(f"the previous database is kept as {kept}", file=out)
    if changed:
        print(f"state files restored: {', '.join(changed)}", file=out)
    return 0
