"""enigmad as a user meets it: a real subprocess on free loopback ports, spoken to over ZeroMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus.errors import BadRequest, Forbidden, NotFound, UnknownMethod
from tests.conftest import DaemonProcess, StartDaemon
from tests.daemon.raw_client import RawClient


@pytest.fixture
def daemon(fresh_shared_daemon: DaemonProcess) -> DaemonProcess:
    """The module's shared daemon: these tests only call it, and each finds every module unloaded."""
    return fresh_shared_daemon


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[RawClient]:
    c = RawClient(daemon.rpc, daemon.events)
    yield c
    c.close()


async def test_ping_answers_pong_with_boot_id(client: RawClient) -> None:
    body = await client.call("sys.ping", {"nonce": 7})
    assert body["pong"] is True
    assert body["nonce"] == 7
    assert len(body["boot_id"]) == 16


async def test_status_reports_identity_modules_and_endpoints(daemon: DaemonProcess, client: RawClient) -> None:
    status = await client.call("sys.status")
    assert status["endpoints"] == {"rpc": daemon.rpc, "events": daemon.events}
    assert {"name": "echo", "state": "unloaded"} in status["modules"]
    assert status["node_id"]
    assert status["uptime"] >= 0
    assert status["clients"] >= 1
    assert status["inflight"] == 1  # this very request
    assert (status["phase"], status["loading"]) == ("ready", [])  # nothing to load: ready at once


async def test_node_id_is_derived_once_and_kept(daemon_factory: StartDaemon) -> None:
    first = daemon_factory()
    c = RawClient(first.rpc)
    node = (await c.call("sys.status"))["node_id"]
    c.close()
    assert first.stop() == 0
    second = daemon_factory(data_dir=first.data_dir)
    c = RawClient(second.rpc)
    try:
        assert (await c.call("sys.status"))["node_id"] == node
    finally:
        c.close()


async def test_methods_lists_core_methods_with_access_and_stream_flag(client: RawClient) -> None:
    methods = {m["method"]: m for m in (await client.call("sys.methods"))["methods"]}
    assert methods["module.load"]["access"] == "admin"
    assert methods["sys.ping"]["access"] == "device"
    assert methods["module.list"]["access"] == "user"
    assert methods["bus.publish"]["stream"] is False
    assert methods["module.load"]["summary"].startswith("Load ")
    assert all(m["allowed"] for m in methods.values())  # loopback callers are admin


async def test_unknown_method_is_refused_and_daemon_still_answers(client: RawClient) -> None:
    with pytest.raises(UnknownMethod, match=r"unknown method 'sys\.nope'"):
        await client.call("sys.nope")
    assert (await client.call("sys.ping"))["pong"] is True


async def test_wrong_body_type_is_bad_request_naming_the_field(client: RawClient) -> None:
    with pytest.raises(BadRequest, match=r"module\.load: name: 5 is not of type 'string'") as exc:
        await client.call("module.load", {"name": 5})
    assert exc.value.details == {"field": "name"}


async def test_module_list_shows_builtin_modules(client: RawClient) -> None:
    mods = {m["name"]: m for m in (await client.call("module.list"))["modules"]}
    assert mods["echo"]["provides"] == ["echo.say", "echo.count"]
    assert mods["system"]["state"] == "unloaded"
    assert mods["echo"]["description"]


async def test_module_load_publishes_each_state_and_serves_its_methods(client: RawClient) -> None:
    await client.subscribe("module.")
    reply = await client.call("module.load", {"name": "echo"})
    assert reply == {"name": "echo", "state": "active", "loaded": ["echo"]}
    states = [(await client.wait_event("module.state"))["state"] for _ in range(3)]
    assert states == ["loading", "loaded", "active"]
    assert (await client.call("echo.say", {"text": "hi"}))["text"] == "hi"


async def test_module_unload_publishes_states_and_removes_its_methods(client: RawClient) -> None:
    await client.call("module.load", {"name": "echo"})
    await client.subscribe("module.")
    assert await client.call("module.unload", {"name": "echo"}) == {"name": "echo", "state": "unloaded"}
    assert [(await client.wait_event("module.state"))["state"] for _ in range(2)] == ["unloading", "unloaded"]
    with pytest.raises(UnknownMethod):
        await client.call("echo.say", {"text": "hi"})


async def test_loading_an_unknown_module_is_not_found(client: RawClient) -> None:
    with pytest.raises(NotFound, match=r"no module named 'nope' \(known: .*echo.*system"):
        await client.call("module.load", {"name": "nope"})
    assert (await client.call("sys.ping"))["pong"] is True


async def test_system_module_answers_info_and_publishes_stats(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config="[modules]\nautoload = ['system']\n[modules.system]\ninterval = 0.05\n")
    c = RawClient(d.rpc, d.events)
    try:
        info = await c.call("system.info")
        assert info["cpu_count"] >= 1
        assert info["disk"]["free"] > 0
        assert info["memory"]["available"] > 0
        assert len(info["load"]) == 3
        await c.subscribe("system.")
        stats = await c.wait_event("system.stats")
        assert stats["disk"]["path"] == str(d.data_dir)
    finally:
        c.close()


async def test_bus_publish_reaches_subscribers(client: RawClient) -> None:
    await client.subscribe("robot.")
    await client.call("bus.publish", {"topic": "robot.pose", "body": {"x": 1}})
    assert await client.wait_event("robot.pose") == {"x": 1}


async def test_bus_publish_on_reserved_prefix_is_forbidden(client: RawClient) -> None:
    with pytest.raises(Forbidden, match=r"topic 'module\.state' is reserved for the daemon"):
        await client.call("bus.publish", {"topic": "module.state", "body": {"name": "x", "state": "active"}})


async def test_bus_publish_refuses_a_malformed_topic(client: RawClient) -> None:
    with pytest.raises(BadRequest, match=r"bus\.publish: topic: 'a..b' does not match"):
        await client.call("bus.publish", {"topic": "a..b"})


async def test_event_replay_returns_the_last_events_oldest_first(client: RawClient) -> None:
    for i in range(5):
        await client.call("bus.publish", {"topic": "game.score", "body": {"i": i}})
    events = (await client.call("event.replay", {"prefix": "game.", "limit": 3}))["events"]
    assert [e["body"]["i"] for e in events] == [2, 3, 4]
    assert all(e["topic"] == "game.score" for e in events)


async def test_event_replay_limit_is_bounded(client: RawClient) -> None:
    with pytest.raises(BadRequest, match=r"event\.replay: limit: 5000 is greater than the maximum of 1000"):
        await client.call("event.replay", {"limit": 5000})


async def test_echo_count_streams_n_chunks_then_end(client: RawClient) -> None:
    await client.call("module.load", {"name": "echo"})
    answers = [env async for env in client.stream("echo.count", {"n": 5})]
    assert [a.body["i"] for a in answers[:-1]] == [0, 1, 2, 3, 4]
    assert [a.seq for a in answers[:-1]] == [0, 1, 2, 3, 4]
    assert (answers[-1].kind, answers[-1].body) == ("end", {"count": 5})


async def test_cancel_stops_an_echo_stream_with_cancelled(client: RawClient) -> None:
    await client.call("module.load", {"name": "echo"})
    kinds = []
    async for env in client.stream("echo.count", {"n": 1000, "delay": 0.01}):
        kinds.append(env.kind)
        if len(kinds) == 2:
            await client.cancel(client.last_request_id)
        if env.kind == "error":
            assert env.body["code"] == "cancelled"
    assert kinds[-1] == "error"
    assert len(kinds) < 1000
    assert (await client.call("sys.ping"))["pong"] is True


async def test_loaded_modules_come_back_after_restart_and_unloaded_stay_off(daemon_factory: StartDaemon) -> None:
    first = daemon_factory(config="[modules]\nautoload = ['system']\n")
    c = RawClient(first.rpc)
    await c.call("module.load", {"name": "echo"})
    await c.call("module.unload", {"name": "system"})
    c.close()
    assert first.stop() == 0
    second = daemon_factory(data_dir=first.data_dir, config="[modules]\nautoload = ['system']\n")
    c = RawClient(second.rpc)
    try:
        mods = {m["name"]: m["state"] for m in (await c.call("module.list"))["modules"]}
    finally:
        c.close()
    assert (mods["echo"], mods["system"]) == ("active", "unloaded")


async def test_unload_of_unknown_module_is_not_found(client: RawClient) -> None:
    with pytest.raises(NotFound, match=r"no module named 'ghost'"):
        await client.call("module.unload", {"name": "ghost"})
    assert (await client.call("sys.ping"))["pong"] is True
