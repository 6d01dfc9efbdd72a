"""Three daemons on a private LAN (network namespaces joined by veth pairs; loopback where that is impossible):
discovery, pairing, refusal of the unpaired, forwarded chat and generation, mirroring, and a peer that dies
mid-stream. The tests share the daemons and run in file order; the last one kills B.
"""

from __future__ import annotations

import asyncio

import pytest

from bus.errors import Forbidden, Unavailable
from tests.lan.conftest import LanSetup, peers_file
from tests.lan.harness import Relay

B_MODEL = "smollm2-135m-instruct"  # the name B's default model is served under; A's is named by its path

pytestmark = [pytest.mark.slow, pytest.mark.model, pytest.mark.timeout(600)]


def _need_netns(lan: LanSetup) -> None:
    if not lan.netns:
        pytest.skip("network namespaces are unavailable here: daemons run on loopback, which announces nothing")


async def test_discovery_finds_the_other_daemons_by_mdns_and_broadcast(
    lan: LanSetup, relays: tuple[Relay, Relay]
) -> None:
    _need_netns(lan)
    ra, _ = relays
    found = (await ra.call("peers.discover", {"duration": 3.0}))["records"]
    by_id = {r["node_id"]: r for r in found}
    assert set(by_id) == {"B", "C"}
    b = by_id["B"]
    assert b["via"] == "mdns"
    assert b["rpc"] == lan.b.rpc
    assert b["key"] == lan.b.keypair.public
    assert b["fingerprint"].count(":") == 3
    assert b["caps"]["models"] == [B_MODEL]
    assert b["caps"]["free_memory"] > 0
    assert by_id["C"]["via"] == "broadcast"  # C announces only by UDP broadcast
    assert by_id["C"]["caps"]["models"] == []


async def test_unpaired_daemon_is_refused(lan: LanSetup) -> None:
    # C calls B with its own key, which B has never been asked to trust.
    relay = await Relay.start(
        lan.c.node, lan.b.rpc, lan.b.proc.events, lan.b.keypair.public, lan.c.proc.data_dir / "server.key"
    )
    try:
        with pytest.raises(Unavailable, match="the server refused our CURVE key"):
            await relay.call("sys.ping", timeout=3.0)
    finally:
        await relay.close()


async def test_wrong_pairing_code_is_refused_and_pairs_nothing(lan: LanSetup, relays: tuple[Relay, Relay]) -> None:
    ra, rb = relays
    window = await rb.call("peers.pair_open", {"role": "user", "ttl": 30})
    wrong = "000-000" if window["code"] != "000-000" else "111-111"
    with pytest.raises(Forbidden, match=r"wrong pairing code \(2 attempts left\)"):
        await ra.call("peers.pair", {"endpoint": window["endpoint"], "code": wrong})
    assert peers_file(lan.a) == []
    assert peers_file(lan.b) == []
    assert (await ra.call("sys.ping"))["pong"] is True  # and the daemon still answers


async def test_pairing_links_both_daemons(paired: LanSetup, relays: tuple[Relay, Relay]) -> None:
    ra, _ = relays
    a_peers = (await ra.call("peers.list"))["peers"]
    assert [(p["node_id"], p["state"], p["role"]) for p in a_peers] == [("B", "up", "user")]
    assert a_peers[0]["caps"]["models"] == [B_MODEL]
    b_side = peers_file(paired.b)
    assert [(p["node_id"], p["key"]) for p in b_side] == [("A", paired.a.keypair.public)]


async def test_forwarded_chat_streams_from_the_peer_and_is_stored_here(
    paired: LanSetup, relays: tuple[Relay, Relay]
) -> None:
    ra, rb = relays
    s = ra.stream("chat.send", {"text": "Say hello.", "model": B_MODEL, "max_tokens": 8, "temperature": 0})
    chunks = [c async for c in s]
    assert chunks
    assert s.result is not None
    assert s.result["usage"]["model"] == B_MODEL  # B's model, not A's
    history = await ra.call("session.history", {"id": s.result["session_id"]})
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert history["messages"][1]["text"] == "".join(c["text"] for c in chunks)
    assert history["messages"][1]["complete"]
    assert (await rb.call("session.list"))["sessions"] == []  # nothing stored on the serving peer


async def test_generate_for_a_model_only_the_peer_has_is_forwarded(
    paired: LanSetup, relays: tuple[Relay, Relay]
) -> None:
    ra, _ = relays
    s = ra.stream("llm.generate", {"prompt": "The sky is", "model": B_MODEL, "max_tokens": 4, "temperature": 0})
    assert [c async for c in s]
    assert s.result is not None
    assert s.result["peer"] == "B"
    assert s.result["usage"]["model"] == B_MODEL


async def test_events_from_the_peer_are_mirrored(paired: LanSetup, relays: tuple[Relay, Relay]) -> None:
    ra, rb = relays
    events = await ra.subscribe("lan.")
    got = None
    async with asyncio.timeout(30):
        while got is None:  # pub/sub drops what is sent before A's mirror subscribed: send until it arrives
            await rb.call("bus.publish", {"topic": "lan.robot", "body": {"x": 1}})
            try:
                got = (await asyncio.wait_for(events.get(), 1.0))["event"]
            except TimeoutError:
                continue
    assert got == {"topic": "lan.robot", "body": {"x": 1, "via": "B"}}


async def test_peer_killed_mid_stream_gives_unavailable_and_the_next_request_falls_back(
    paired: LanSetup, relays: tuple[Relay, Relay]
) -> None:
    ra, _ = relays
    s = ra.stream(
        "llm.generate",
        {"prompt": "Count from one to one hundred:", "model": B_MODEL, "max_tokens": 400, "temperature": 0},
    )
    it = s.__aiter__()
    await anext(it)
    paired.b.proc.proc.kill()
    with pytest.raises(Unavailable, match="went away mid-request"):
        async for _ in it:
            pass
    s2 = ra.stream("llm.generate", {"prompt": "The sky is", "model": B_MODEL, "max_tokens": 2, "temperature": 0})
    assert [c async for c in s2]
    assert s2.result is not None
    assert "peer" not in s2.result
    assert s2.result["usage"]["model"] == paired.model_a  # A's own model served it
    listed = (await ra.call("peers.list"))["peers"]
    assert [(p["node_id"], p["state"]) for p in listed] == [("B", "down")]
