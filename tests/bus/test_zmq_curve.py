"""CURVE: exposed binds need keys, only allow-listed keys get in, and the key's role limits the methods."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.auth import AllowList, ClientCurve, KeyPair, ServerAuth, generate_keypair
from bus.errors import Forbidden, Unavailable
from bus.zmq_server import ZmqServer
from clients.sdk import Client
from tests.bus.conftest import Probes, build_hub, make_server


@pytest.fixture
def server_keys() -> KeyPair:
    return generate_keypair()


@pytest.fixture
def keys() -> dict[str, KeyPair]:
    return {role: generate_keypair() for role in ("admin", "user", "device", "stranger")}


@pytest.fixture
async def curve_server(tmp_path: Path, server_keys: KeyPair, keys: dict[str, KeyPair]) -> AsyncIterator[ZmqServer]:
    allow = AllowList(tmp_path / "allow.json")
    for role in ("admin", "user", "device"):
        allow.add(keys[role].public, role, f"{role}-client")
    allow.save()
    server = make_server(build_hub(Probes()), auth=ServerAuth(server_keys, allow), require_curve=True)
    await server.start()
    try:
        yield server
    finally:
        await server.close(timeout=2)


def client(server: ZmqServer, server_keys: KeyPair, kp: KeyPair, timeout: float = 5) -> Client:
    return Client(
        server.endpoints["rpc"], server.endpoints["events"], timeout=timeout, curve=ClientCurve(server_keys.public, kp)
    )


async def test_non_loopback_bind_without_auth_is_forbidden_and_says_how_to_fix() -> None:
    server = ZmqServer(build_hub(Probes()), rpc="tcp://0.0.0.0:0", events="tcp://127.0.0.1:0", node_id="n", boot_id="b")
    with pytest.raises(Forbidden, match=r"refusing to bind rpc endpoint tcp://0\.0\.0\.0:0 without CURVE") as ei:
        await server.start()
    assert "enigmad keys allow" in ei.value.message
    assert ei.value.details == {"endpoint": "tcp://0.0.0.0:0"}


async def test_curve_server_serves_an_allowed_key_with_its_role(
    curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair]
) -> None:
    assert curve_server.curve is True
    async with client(curve_server, server_keys, keys["user"]) as c:
        assert (await c.call("t.echo", {"x": 1}))["role"] == "user"


async def test_unlisted_key_gets_no_answer_and_unavailable(
    curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair]
) -> None:
    async with client(curve_server, server_keys, keys["stranger"], timeout=0.5) as c:
        with pytest.raises(Unavailable, match="is enigmad running") as ei:
            await c.call("sys.ping")
    assert "refused our CURVE key" in ei.value.message
    assert curve_server.stats()["refused_keys"] >= 1


async def test_device_key_calling_admin_method_is_forbidden(
    curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair]
) -> None:
    async with client(curve_server, server_keys, keys["device"]) as c:
        assert await c.call("sys.ping") == {"pong": True}
        with pytest.raises(Forbidden, match=r"role 'device' may not call 't\.admin' \(needs 'admin'\)"):
            await c.call("t.admin")


async def test_client_without_keys_cannot_talk_to_a_curve_server(curve_server: ZmqServer) -> None:
    rpc, events = curve_server.endpoints["rpc"], curve_server.endpoints["events"]
    async with Client(rpc, events, timeout=0.5) as c:
        with pytest.raises(Unavailable, match="no answer from"):
            await c.call("sys.ping")


async def test_revoked_key_is_refused_on_its_next_request(
    tmp_path: Path, curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair]
) -> None:
    from bus.errors import Unauthorized

    async with client(curve_server, server_keys, keys["user"]) as c:
        assert await c.call("sys.ping") == {"pong": True}
        editor = AllowList(tmp_path / "allow.json").load()
        assert editor.remove("user-client")
        editor.save()
        curve_server._reload_allow_list()  # the heartbeat does this every interval
        with pytest.raises(Unauthorized, match="no longer on the server's allow-list"):
            await c.call("sys.ping")


async def test_curve_events_reach_an_allowed_subscriber(
    curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair]
) -> None:
    async with client(curve_server, server_keys, keys["device"]) as c, c.subscribe("sys.heartbeat") as sub:
        ev = await asyncio.wait_for(sub.__anext__(), 5)
        assert ev.body["boot_id"] == "boot-1"


async def test_loopback_with_auth_but_without_require_curve_stays_plain(tmp_path: Path, server_keys: KeyPair) -> None:
    server = make_server(build_hub(Probes()), auth=ServerAuth(server_keys, AllowList(tmp_path / "a.json")))
    await server.start()
    try:
        assert server.curve is False
        async with Client(server.endpoints["rpc"], server.endpoints["events"], timeout=5) as c:
            assert (await c.call("t.echo"))["role"] == "admin"
    finally:
        await server.close(timeout=2)


async def test_key_allowed_while_running_is_admitted_at_its_handshake_with_its_role(
    tmp_path: Path, curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair]
) -> None:
    editor = AllowList(tmp_path / "allow.json").load()
    editor.add(keys["stranger"].public, "device", "late-client")
    editor.save()  # no restart and no heartbeat needed: the handshake re-reads the changed file
    async with client(curve_server, server_keys, keys["stranger"]) as c:
        assert (await c.call("sys.ping")) == {"pong": True}
        with pytest.raises(Forbidden, match="role 'device'"):
            await c.call("t.echo")
    assert curve_server.stats()["refused_keys"] == 0


async def test_broken_allow_list_keeps_the_previous_one_in_force(
    tmp_path: Path,
    curve_server: ZmqServer,
    server_keys: KeyPair,
    keys: dict[str, KeyPair],
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "allow.json").write_text("{not json")
    async with client(curve_server, server_keys, keys["user"]) as c:
        assert (await c.call("t.echo"))["role"] == "user"
    assert any(r.getMessage().startswith("keeping the previous allow-list: ") for r in caplog.records)


async def test_refused_keys_are_counted_and_logged_once_with_key_and_address(
    curve_server: ZmqServer, server_keys: KeyPair, keys: dict[str, KeyPair], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="enigma.bus.zmq")
    for _ in range(3):  # three connections, three handshakes, each refused
        async with client(curve_server, server_keys, keys["stranger"], timeout=0.3) as c:
            with pytest.raises(Unavailable, match="refused our CURVE key"):
                await c.call("sys.ping")
    assert curve_server.stats()["refused_keys"] >= 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "enigma.bus.zmq" and "refused" in r.getMessage()]
    assert warnings == [f"refused CURVE key {keys['stranger'].public} from 127.0.0.1"]
