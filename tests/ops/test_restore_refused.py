"""Restores the daemon must refuse — before touching anything — and the daemon serving on with its data.

One daemon serves the whole module: every test here is refused, so its state must be exactly what the fixture
set up, which ``_intact`` checks after each refusal.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk import BadRequest, Client, Conflict, NotFound, TooLarge
from tests.conftest import DaemonLauncher, DaemonProcess
from tests.ops.conftest import edit_db, repack, restore, take_backup, upload

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def daemon(module_launcher: DaemonLauncher) -> DaemonProcess:
    return module_launcher.start(env={"ENIGMA_DAEMON__BACKUP_MAX_BYTES": "3000000"})


@pytest.fixture(scope="module")
def good(daemon: DaemonProcess) -> dict[str, Any]:
    """A valid backup of the daemon with echo loaded, and its node id."""

    async def make() -> dict[str, Any]:
        async with Client(daemon.rpc, daemon.events, timeout=20.0) as c:
            await c.call("module.load", {"name": "echo"})
            data, _ = await take_backup(c)
            node = (await c.call("sys.status"))["node_id"]
        return {"data": data, "node": node}

    return asyncio.run(make())


@pytest.fixture
async def client(daemon: DaemonProcess, good: dict[str, Any]) -> AsyncIterator[Client]:
    async with Client(daemon.rpc, daemon.events, timeout=20.0) as c:
        yield c
        await _intact(c, daemon, good["node"])


async def _intact(c: Client, daemon: DaemonProcess, node: str) -> None:
    status = await c.call("sys.status")
    assert status["node_id"] == node
    assert {m["name"]: m["state"] for m in status["modules"]}["echo"] == "active"
    assert (await c.call("echo.say", {"text": "still here"}))["text"] == "still here"
    assert not (daemon.data_dir / "enigma.db.before-restore").exists()


async def test_newer_schema_is_refused_with_conflict_naming_area_and_versions(
    client: Client, good: dict[str, Any], tmp_path: Path
) -> None:
    newer = repack(good["data"], lambda f: edit_db(f, tmp_path, "INSERT INTO schema_migrations VALUES ('core', 2, 0)"))
    with pytest.raises(Conflict, match=r"'core' schema is at version 2, but this enigmad knows only up to 1") as e:
        await restore(client, newer)
    assert e.value.details == {"area": "core", "backup_version": 2, "known_version": 1}


async def test_newer_archive_format_is_refused_with_conflict(client: Client, good: dict[str, Any]) -> None:
    def bump(files: dict[str, bytes]) -> None:
        files["manifest.json"] = files["manifest.json"].replace(b'"format": 1', b'"format": 2')

    with pytest.raises(Conflict, match="archive format 2, but this enigmad reads up to format 1"):
        await restore(client, repack(good["data"], bump))


async def test_flipped_bytes_are_refused_as_corrupt(client: Client, good: dict[str, Any]) -> None:
    data = bytearray(good["data"])
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    with pytest.raises(BadRequest, match="corrupt or truncated"):
        await restore(client, bytes(data))


async def test_truncated_archive_is_refused_as_corrupt(client: Client, good: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="corrupt or truncated"):
        await restore(client, good["data"][: len(good["data"]) * 2 // 3])


async def test_checksum_mismatch_is_refused(client: Client, good: dict[str, Any], tmp_path: Path) -> None:
    altered = repack(
        good["data"],
        lambda f: edit_db(f, tmp_path, "UPDATE module_wishes SET wanted = 0"),
        fix_manifest=False,
    )
    with pytest.raises(BadRequest, match=r"checksum mismatch for 'enigma\.db'") as e:
        await restore(client, altered)
    assert e.value.details == {"file": "enigma.db"}


async def test_damaged_database_is_refused(client: Client, good: dict[str, Any]) -> None:
    def damage(files: dict[str, bytes]) -> None:
        db = bytearray(files["enigma.db"])
        db[4096 : 4096 * 3] = os.urandom(4096 * 2)  # pages 2-3: schema_migrations and kv
        files["enigma.db"] = bytes(db)

    with pytest.raises(BadRequest, match=r"integrity check|not a usable enigma database"):
        await restore(client, repack(good["data"], damage))


async def test_archive_with_a_foreign_entry_is_refused(client: Client, good: dict[str, Any]) -> None:
    def smuggle(files: dict[str, bytes]) -> None:
        files["../../etc/cron.d/evil"] = b"* * * * * root true\n"

    with pytest.raises(BadRequest, match=r"unexpected entry '\.\./\.\./etc/cron\.d/evil'"):
        await restore(client, repack(good["data"], smuggle))


async def test_archive_without_manifest_is_refused(client: Client, good: dict[str, Any]) -> None:
    def drop(files: dict[str, bytes]) -> None:
        del files["manifest.json"]

    with pytest.raises(BadRequest, match=r"no manifest\.json"):
        await restore(client, repack(good["data"], drop, fix_manifest=False))


async def test_upload_over_the_size_bound_is_too_large(client: Client) -> None:
    upload_id = "big"
    for seq in range(2):
        await client.call("backup.upload", {"upload_id": upload_id, "seq": seq, "data": os.urandom(1024 * 1024)})
    with pytest.raises(TooLarge, match=r"larger than this daemon accepts \(2.9 MiB, daemon.backup_max_bytes\)"):
        await client.call("backup.upload", {"upload_id": upload_id, "seq": 2, "data": os.urandom(1024 * 1024)})
    with pytest.raises(NotFound, match="no upload 'big'"):  # it was discarded
        await client.call("backup.restore", {"upload_id": upload_id})


async def test_upload_part_out_of_order_is_refused(client: Client) -> None:
    await client.call("backup.upload", {"upload_id": "gap", "seq": 0, "data": b"x"})
    with pytest.raises(BadRequest, match="expected part 1, got 2"):
        await client.call("backup.upload", {"upload_id": "gap", "seq": 2, "data": b"y"})


async def test_upload_that_does_not_start_at_zero_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="start it with seq 0"):
        await client.call("backup.upload", {"upload_id": "late", "seq": 3, "data": b"x"})


async def test_upload_of_text_instead_of_bytes_is_bad_request(client: Client) -> None:
    with pytest.raises(BadRequest, match="data: must be binary"):
        await client.call("backup.upload", {"upload_id": "txt", "seq": 0, "data": "not bytes"})


async def test_restore_of_unknown_upload_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match=r"send the archive with backup\.upload first"):
        await client.call("backup.restore", {"upload_id": "never"})


async def test_restore_of_garbage_upload_is_refused(client: Client) -> None:
    upload_id = await upload(client, b"this is not a backup at all")
    with pytest.raises(BadRequest, match="corrupt or truncated"):
        await client.call("backup.restore", {"upload_id": upload_id})


async def test_backup_methods_are_for_admins_only(client: Client) -> None:
    methods = {m["method"]: m for m in (await client.call("sys.methods"))["methods"]}
    assert {name: methods[name]["access"] for name in ("backup.create", "backup.upload", "backup.restore")} == {
        "backup.create": "admin",
        "backup.upload": "admin",
        "backup.restore": "admin",
    }
    assert methods["backup.create"]["stream"] is True
