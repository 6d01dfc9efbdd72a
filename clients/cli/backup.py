"""``enigma backup create|restore``: the daemon's state as one file on the machine where you type.

``create`` streams the archive from the daemon (which may be on another host) into ``-o FILE`` or, by default,
``enigma-backup-<node>-<date>.tar.gz`` in the current directory; it is written to ``FILE.partial`` first and
renamed only once complete and its sha256 matches what the daemon sent, so a file with the final name is never
a half backup. ``restore`` uploads a file in 1 MiB parts and asks the daemon to restore it: the daemon checks it
completely first and refuses a corrupt one (``bad_request``) or one from a newer enigmad (``conflict``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.cli.exits import CliError

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output

PART = 1024 * 1024  # bytes per uploaded part: the daemon's limit for one backup.upload
# A restore unloads and reloads every module (an LLM's model too): without --timeout, wait this long for it.
RESTORE_TIMEOUT = 600.0


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backup",
        parents=[common],
        help="back up the daemon's state to a file, or restore one",
        description="Back up the daemon's database and state files (keys, allow-list, model index; not model "
        "weights) while it runs, or restore such a backup into it. Restoring replaces the daemon's data: its "
        "current database is kept beside it as enigma.db.before-restore.",
    )
    actions = p.add_subparsers(dest="backup_action", metavar="ACTION", required=True)
    c = actions.add_parser("create", parents=[common], help="write a backup archive of the running daemon")
    c.add_argument(
        "-o", "--output", metavar="FILE", help="where to write it (default: enigma-backup-<node>-<date>.tar.gz here)"
    )
    c.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    c.set_defaults(run=create)
    r = actions.add_parser(
        "restore",
        parents=[common],
        help="replace the daemon's state with a backup (in-flight requests are cancelled)",
    )
    r.add_argument("file", metavar="FILE", help="a backup archive made by `enigma backup create`")
    r.set_defaults(run=restore)


async def create(ctx: Context) -> Output:
    import hashlib
    import os
    import time

    from clients.cli.render import Fields

    target = Path(ctx.args.output) if ctx.args.output else None
    if target is not None and target.exists() and not ctx.args.force:
        raise CliError(f"{target} exists — choose another name, or overwrite it with --force", code="exists")
    partial = (target or Path.cwd() / f".enigma-backup-{os.getpid()}").with_suffix(".partial")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(partial, "wb") as f:  # noqa: ASYNC230 - a one-shot CLI: local writes between network reads
            os.chmod(partial, 0o600)  # it holds the server's secret key
            async with ctx.client() as c, c.stream("backup.create", {}, timeout=ctx.timeout) as s:
                async for chunk in s:
                    data = chunk.get("data")
                    if not isinstance(data, bytes):
                        raise CliError("the daemon sent a backup part without data", code="internal")
                    f.write(data)
                    digest.update(data)
                    size += len(data)
            result = s.result or {}
        if result.get("sha256") != digest.hexdigest() or result.get("size") != size:
            raise CliError("the backup arrived damaged (its checksum does not match); try again", code="internal")
        manifest = result.get("manifest", {})
        if target is None:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(manifest.get("created") or time.time()))
            target = Path.cwd() / f"enigma-backup-{manifest.get('node_id') or 'node'}-{stamp}.tar.gz"
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    schema = ", ".join(f"{a} v{v}" for a, v in sorted(manifest.get("schema", {}).items()))
    data = {"file": str(target), "size": size, "sha256": digest.hexdigest(), "manifest": manifest}
    return Fields(
        [
            ("backup", str(target)),
            ("size", _size(size)),
            ("node", manifest.get("node_id")),
            ("schema", schema),
            ("files", sorted(manifest.get("files", {}))),
        ],
        data=data,
    )


async def restore(ctx: Context) -> Output:
    import os

    from clients.cli.render import Fields, Group, Text

    path = Path(ctx.args.file)
    try:
        f = open(path, "rb")  # noqa: ASYNC230, SIM115 - a local file read in 1 MiB parts between network round trips
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", code="os_error") from None
    upload_id = os.urandom(8).hex()
    timeout = ctx.timeout if ctx.args.timeout is not None else RESTORE_TIMEOUT
    with f:
        async with ctx.client() as c:
            seq = 0
            while part := f.read(PART):
                await c.call("backup.upload", {"upload_id": upload_id, "seq": seq, "data": part}, timeout=ctx.timeout)
                seq += 1
            if seq == 0:
                raise CliError(f"{path} is empty: not a backup", code="bad_request")
            ctx.render.note(f"uploaded {path}; the daemon is checking and restoring it …")
            result = await c.call("backup.restore", {"upload_id": upload_id}, timeout=timeout)
    info = result.get("restored", {})
    fields = Fields(
        [
            ("restored", str(path)),
            ("from node", info.get("node_id")),
            ("schema", ", ".join(f"{a} v{v}" for a, v in sorted((info.get("schema") or {}).items()))),
            ("modules", result.get("modules")),
            ("previous db", result.get("before_restore")),
            ("state files", result.get("state_files")),
        ],
        data=result,
    )
    if result.get("restart_needed"):
        note = "The restored node id or server key takes effect at the next restart: systemctl restart enigmad"
        return Group([fields, Text(note)], data=result)
    return fields


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
