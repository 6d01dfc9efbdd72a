"""The module recipe of ``docs/develop.md``, followed by ``tests/daemon/toy``: a real daemon loads the toy module
through its manager — settings checked against the schema, the method declared with ``@method`` served, the
event published, a core service used — and refuses a bad setting naming the key and where it was set."""

from __future__ import annotations

import asyncio

import pytest

from bus.errors import BadRequest, Unavailable
from clients.sdk import Client
from tests.conftest import StartDaemon
from tests.daemon.toy.module import TOY_GREETED
from tests.daemon.toy_daemon import MAIN


def toy_config(table: str = "") -> str:
    return f'[modules]\nautoload = ["toy"]\n\n[modules.toy]\n{table}'


async def test_toy_module_loads_serves_its_method_and_publishes_its_event(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config=toy_config('greeting = "ahoy"\n'), main=MAIN)
    async with Client(d.rpc, d.events, timeout=10) as c:
        toy = {m["name"]: m for m in (await c.call("module.list"))["modules"]}["toy"]
        assert (toy["state"], toy["provides"]) == ("active", ["toy.greet"])
        async with c.subscribe(TOY_GREETED) as events:
            await events.live()
            assert await c.call("toy.greet", {"name": "ada"}) == {"text": "ahoy, ada"}
            ev = await asyncio.wait_for(events.__anext__(), 10)
        node_id = (await c.call("sys.ping"))["node_id"]
    assert ev.body == {"name": "ada", "text": "ahoy, ada", "node_id": node_id}


async def test_toy_setting_default_comes_from_its_schema(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config=toy_config(), main=MAIN)
    async with Client(d.rpc, d.events, timeout=10) as c:
        assert await c.call("toy.greet", {"name": "ada"}) == {"text": "hello, ada"}
        with pytest.raises(BadRequest, match="name"):  # the method's body schema, declared with the handler
            await c.call("toy.greet", {})


async def test_a_bad_toy_setting_fails_the_module_naming_key_and_file(daemon_factory: StartDaemon) -> None:
    d = daemon_factory(config=toy_config("greeting = 7\n"), main=MAIN)
    async with Client(d.rpc, d.events, timeout=10) as c:
        toy = {m["name"]: m for m in (await c.call("module.list"))["modules"]}["toy"]
        with pytest.raises(Unavailable) as info:
            await c.call("module.load", {"name": "toy"})
        assert (await c.call("sys.ping"))["pong"] is True
    expected = f"modules.toy.greeting must be a string, got 7 in {d.config_path}"
    assert (toy["state"], toy["error"]) == ("failed", expected)
    assert info.value.message == f"module 'toy' failed to load: {expected}"
    assert info.value.details == {"cause": "bad_request"}


async def test_a_toy_setting_from_the_environment_is_named_by_its_variable(daemon_factory: StartDaemon) -> None:
    env = {"ENIGMA_MODULES__TOY__SHOUT": "true"}
    d = daemon_factory(config=toy_config(), main=MAIN, env=env)
    async with Client(d.rpc, d.events, timeout=10) as c:
        toy = {m["name"]: m for m in (await c.call("module.list"))["modules"]}["toy"]
    assert toy["state"] == "failed"
    assert toy["error"] == "modules.toy: unknown key 'shout' from $ENIGMA_MODULES__TOY__SHOUT (known: greeting)"
