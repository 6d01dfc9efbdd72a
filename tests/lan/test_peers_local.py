"""The ``peers`` module on a daemon bound to loopback: it announces nothing, and its errors say why."""

from __future__ import annotations

from typing import Any

import pytest

from bus.discovery import Announcer, Browser, Record
from bus.errors import BadRequest, NotFound, Unavailable
from clients.sdk import Client
from tests.conftest import DaemonLauncher, DaemonProcess, StartDaemon


async def _drain(c: Client, method: str, body: dict[str, Any]) -> None:
    async with c.stream(method, body) as s:
        async for _ in s:
            pass


CONFIG = '[modules]\nautoload = ["peers", "chat"]\n[modules.peers]\ninterfaces = ["127.0.0.1"]\n'


@pytest.fixture(scope="module")
def lonely(module_launcher: DaemonLauncher) -> DaemonProcess:
    """A daemon on loopback, told to announce on 127.0.0.1 — which it must not do while bound to loopback. The
    module's tests share it: they only ask it, or are refused (a pairing window one opens is never used)."""
    return module_launcher.start("--node-id", "lonely-node", config=CONFIG)


async def test_loopback_daemon_announces_nothing(lonely: DaemonProcess) -> None:
    async with Client(lonely.rpc, lonely.events, timeout=10) as c:
        disc = (await c.call("peers.list"))["discovery"]
    assert disc == {
        "announcing": False,
        "interfaces": [],
        "broadcast": [],
        "reason": "bound to loopback only: nothing to announce",
    }
    # And on the wire: a control record announced on loopback is seen, the daemon is not.
    browser = Browser(["127.0.0.1"])
    control = Announcer(Record(node_id="lan-control"), ["127.0.0.1"], 9)
    await browser.start()
    await control.start()
    try:
        await browser.wait_for(lambda rs: "lan-control" in rs, 10)
        assert "lonely-node" not in browser.records
    finally:
        await control.close()
        await browser.close()


async def test_discover_on_a_loopback_daemon_says_why_it_is_off(lonely: DaemonProcess) -> None:
    async with Client(lonely.rpc, lonely.events, timeout=10) as c:
        with pytest.raises(Unavailable, match="discovery is off on this daemon: bound to loopback only"):
            await c.call("peers.discover", {"duration": 0.5})
        assert (await c.call("sys.ping"))["pong"] is True


async def test_unpair_of_an_unknown_peer_is_not_found(lonely: DaemonProcess) -> None:
    async with Client(lonely.rpc, lonely.events, timeout=10) as c:
        with pytest.raises(NotFound, match=r"no paired peer 'nobody' \(paired: none\)"):
            await c.call("peers.unpair", {"peer": "nobody"})


async def test_chat_without_a_model_here_or_on_a_peer_is_unavailable(lonely: DaemonProcess) -> None:
    async with Client(lonely.rpc, lonely.events, timeout=10) as c:
        with pytest.raises(Unavailable, match="no LLM backend is loaded here and no paired peer that is up has one"):
            await _drain(c, "chat.send", {"text": "hi"})
        assert (await c.call("session.list"))["sessions"] == []  # refused before anything was stored


async def test_info_describes_this_node(lonely: DaemonProcess) -> None:
    async with Client(lonely.rpc, lonely.events, timeout=10) as c:
        info = await c.call("peers.info")
    assert info["node_id"] == "lonely-node"
    assert info["endpoints"] == {"rpc": lonely.rpc, "events": lonely.events}
    assert info["fingerprint"].count(":") == 3
    assert info["caps"]["models"] == []
    assert info["caps"]["free_memory"] > 0


async def test_a_bad_option_fails_the_module_with_the_key_named(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config='[modules]\nautoload = ["peers"]\n[modules.peers]\nprefer = "nearest"\n')
    async with Client(d.rpc, d.events, timeout=10) as c:
        mods = {m["name"]: m for m in (await c.call("module.list"))["modules"]}
    assert mods["peers"]["state"] == "failed"
    assert "modules.peers.prefer must be 'local' or 'peers', got 'nearest'" in mods["peers"]["error"]


async def test_pairing_with_its_own_window_is_refused(lonely: DaemonProcess) -> None:
    async with Client(lonely.rpc, lonely.events, timeout=10) as c:
        window = await c.call("peers.pair_open", {})
        with pytest.raises(BadRequest, match="that pairing window is this daemon's own"):
            await c.call("peers.pair", {"endpoint": window["endpoint"], "code": window["code"]})
        assert (await c.call("peers.list"))["peers"] == []
