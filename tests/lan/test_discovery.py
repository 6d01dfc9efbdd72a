"""``bus.discovery`` on its own: zeroconf pinned to loopback, records and their wire forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.discovery import Announcer, BroadcastBeacon, Browser, Record, _decode_record, _encode_record
from bus.errors import BadRequest

LO = ["127.0.0.1"]


def _record(node_id: str = "lan-test-node", load: int = 0) -> Record:
    return Record(
        node_id=node_id,
        version="1.2.3",
        rpc="tcp://127.0.0.1:7700",
        events="tcp://127.0.0.1:7701",
        key="k" * 40,
        fingerprint="aaaa:bbbb:cccc:dddd",
        caps={"models": ["m1", "m2"], "free_memory": 3 * 2**30 + 5, "accelerators": [], "robots": ["r1"], "load": load},
    )


async def test_announced_record_is_found_with_its_capabilities() -> None:
    node_id = f"lan-test-{id(object()):x}"
    ann = Announcer(_record(node_id), LO, 7700)
    browser = Browser(LO)
    await browser.start()
    await ann.start()
    try:
        await browser.wait_for(lambda rs: node_id in rs, 10)
        rec = browser.records[node_id]
        assert (rec.rpc, rec.events, rec.key, rec.fingerprint, rec.version) == (
            "tcp://127.0.0.1:7700",
            "tcp://127.0.0.1:7701",
            "k" * 40,
            "aaaa:bbbb:cccc:dddd",
            "1.2.3",
        )
        assert rec.caps == {
            "models": ["m1", "m2"],
            "free_memory": 3 * 2**30,
            "accelerators": [],
            "robots": ["r1"],
            "load": 0,
        }
        assert (rec.address, rec.via) == ("127.0.0.1", "mdns")
    finally:
        await ann.close()
        await browser.close()


async def test_a_closed_announcer_leaves_the_browser() -> None:
    node_id = f"lan-gone-{id(object()):x}"
    ann = Announcer(_record(node_id), LO, 7700)
    browser = Browser(LO)
    await browser.start()
    await ann.start()
    try:
        await browser.wait_for(lambda rs: node_id in rs, 10)
        await ann.close()
        await browser.wait_for(lambda rs: node_id not in rs, 10)
    finally:
        await ann.close()
        await browser.close()


def test_discovery_never_binds_every_interface() -> None:
    with pytest.raises(BadRequest, match="never binds every interface"):
        Announcer(_record(), [], 7700)
    with pytest.raises(BadRequest, match="never binds every interface"):
        Browser([])


def test_an_interface_must_be_an_ipv4_address() -> None:
    with pytest.raises(BadRequest, match="'eth0' is not an IPv4 address"):
        BroadcastBeacon(None, "eth0", "10.0.0.255")


def test_txt_values_fit_in_255_bytes() -> None:
    rec = Record(node_id="n", caps={"models": ["é" * 300]})
    txt = rec.to_txt()
    assert all(len(v.encode()) <= 255 for v in txt.values())
    assert Record.from_txt(txt).caps["models"] == ["é" * 127]


def test_txt_without_a_node_id_is_refused() -> None:
    with pytest.raises(BadRequest, match="without a node id"):
        Record.from_txt({b"rpc": b"tcp://x:1"})


def test_broadcast_record_round_trips() -> None:
    rec = _record()
    got = _decode_record(_encode_record(rec), "10.213.1.2")
    assert got is not None
    assert (got.node_id, got.rpc, got.key, got.caps, got.address, got.via) == (
        rec.node_id,
        rec.rpc,
        rec.key,
        rec.caps,
        "10.213.1.2",
        "broadcast",
    )


@given(st.binary(max_size=2048))
def test_any_datagram_decodes_to_a_record_or_nothing(data: bytes) -> None:
    got = _decode_record(data, "10.0.0.1")
    assert got is None or isinstance(got, Record)
