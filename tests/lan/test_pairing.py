"""The pairing exchange on its own (``bus.pairing``), over loopback."""

from __future__ import annotations

import asyncio

import pytest

from bus.auth import generate_keypair
from bus.errors import BadRequest, Forbidden, Timeout, Unavailable
from bus.pairing import Identity, Paired, PairingWindow, normalize_code, pair_with, proof


def _identity(node_id: str) -> Identity:
    return Identity(node_id, generate_keypair().public, node_id, {"rpc": f"tcp://127.0.0.1:1{len(node_id)}"})


async def _window(ttl: float = 30.0, code: str = "123-456") -> tuple[PairingWindow, list[Paired]]:
    seen: list[Paired] = []

    async def on_paired(p: Paired) -> None:
        seen.append(p)

    w = PairingWindow(
        endpoint="tcp://127.0.0.1:0", me=_identity("acceptor"), role="device", on_paired=on_paired, code=code, ttl=ttl
    )
    await w.open()
    return w, seen


async def test_right_code_exchanges_keys_and_the_role() -> None:
    w, seen = await _window()
    me = _identity("typer")
    try:
        result = await pair_with(w.bound, me, "123456")
        assert result.peer == w.me
        assert result.role == "device"
        assert seen == [Paired(me, "device")]
        assert (await asyncio.wait_for(w.result, 5)) == Paired(me, "device")
    finally:
        await w.close()


async def test_wrong_code_is_refused_with_attempts_left() -> None:
    w, seen = await _window()
    try:
        with pytest.raises(Forbidden, match=r"wrong pairing code \(2 attempts left\)"):
            await pair_with(w.bound, _identity("typer"), "999-999")
        assert seen == []
        assert w.is_open
    finally:
        await w.close()


async def test_window_closes_after_too_many_wrong_codes() -> None:
    w, seen = await _window()
    try:
        for _ in range(2):
            with pytest.raises(Forbidden, match="attempts left"):
                await pair_with(w.bound, _identity("typer"), "999-999")
        with pytest.raises(Forbidden, match="too many wrong codes, the pairing window is closed"):
            await pair_with(w.bound, _identity("typer"), "999-999")
        with pytest.raises(Forbidden, match="too many wrong pairing codes"):
            await asyncio.wait_for(w.result, 5)
        assert seen == []
    finally:
        await w.close()


async def test_window_expires() -> None:
    w, _ = await _window(ttl=0.2)
    try:
        with pytest.raises(Timeout, match="expired"):
            await asyncio.wait_for(w.result, 5)
    finally:
        await w.close()


async def test_pairing_with_no_window_is_unavailable() -> None:
    with pytest.raises(Unavailable, match=r"no pairing window answered at tcp://127\.0\.0\.1:9 within 0\.3 s"):
        await pair_with("tcp://127.0.0.1:9", _identity("typer"), "123-456", timeout=0.3)


def test_a_code_needs_six_digits() -> None:
    assert normalize_code(" 123 456 ") == "123456"
    with pytest.raises(BadRequest, match="a pairing code has 6 digits"):
        normalize_code("12-34")


def test_proof_binds_both_keys_and_nonces() -> None:
    a, b = generate_keypair().public, generate_keypair().public
    base = proof("123-456", "claim", a, b, "n" * 16, "m" * 16)
    assert base != proof("123-456", "claim", b, a, "n" * 16, "m" * 16)
    assert base != proof("123-456", "claim", a, b, "x" * 16, "m" * 16)
    assert base != proof("123-456", "ack", a, b, "n" * 16, "m" * 16)
    assert base != proof("123-457", "claim", a, b, "n" * 16, "m" * 16)
