"""Unpairing revokes trust at once: two CURVE daemons on loopback (no model), paired, then one forgets the other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.auth import KeyPair, generate_keypair, save_keypair
from tests.lan.harness import LanDaemon, Relay, open_relay, start_daemon
from tests.lan.netns import loopback_nodes

CONFIG = '[modules]\nautoload = ["peers"]\n[modules.peers]\nrefresh = 0.5\n'


@pytest.fixture
def pair_of_daemons(tmp_path: Path) -> Iterator[tuple[LanDaemon, LanDaemon, KeyPair, Path]]:
    me = generate_keypair()
    key_file = tmp_path / "client.key"
    save_keypair(key_file, me)
    started = [
        start_daemon(tmp_path, name, node, me.public, config=CONFIG)
        for name, node in zip("XY", loopback_nodes(2), strict=True)
    ]
    try:
        for d in started:
            d.proc.wait_ready(60)
        yield started[0], started[1], me, key_file
    finally:
        for d in started:
            d.proc.stop()
            if d.proc.proc.stdout is not None:
                d.proc.proc.stdout.close()


@pytest.fixture
async def linked(pair_of_daemons: tuple[LanDaemon, LanDaemon, KeyPair, Path]) -> AsyncIterator[tuple[Relay, Relay]]:
    x, y, _, key_file = pair_of_daemons
    rx, ry = await open_relay(x, key_file), await open_relay(y, key_file)
    window = await ry.call("peers.pair_open", {})
    paired = await rx.call("peers.pair", {"endpoint": window["endpoint"], "code": window["code"]})
    assert paired["peer"]["state"] == "up"
    yield rx, ry
    await rx.close()
    await ry.close()


async def _wait_state(events: asyncio.Queue[dict[str, Any]], node_id: str, state: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            body: dict[str, Any] = (await events.get())["event"]["body"]
            if body["node_id"] == node_id and body["state"] == state:
                return body


async def test_the_unpaired_side_is_refused_at_its_next_call(linked: tuple[Relay, Relay]) -> None:
    rx, ry = linked
    states = await ry.subscribe("peers.state")
    ry_peers = (await ry.call("peers.list"))["peers"]
    if ry_peers[0].get("state") != "up":  # Y's link to X comes up once X has admitted Y's key
        await _wait_state(states, "X", "up")
    assert (await rx.call("peers.unpair", {"peer": "Y"})) == {"unpaired": "Y"}
    down = await _wait_state(states, "X", "down")
    assert "this key is no longer on the server's allow-list" in down["error"]
    assert (await rx.call("peers.list"))["peers"] == []


async def test_unpair_revokes_the_key_in_the_allow_list(
    linked: tuple[Relay, Relay], pair_of_daemons: tuple[LanDaemon, LanDaemon, KeyPair, Path]
) -> None:
    x, y, me, _ = pair_of_daemons
    rx, _ = linked

    def keys() -> set[str]:
        return {e["key"] for e in json.loads((x.proc.data_dir / "allow.json").read_text())}

    assert keys() == {me.public, y.keypair.public}
    await rx.call("peers.unpair", {"peer": "Y"})
    assert keys() == {me.public}
