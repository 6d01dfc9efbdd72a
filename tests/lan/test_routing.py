"""Where a call goes: the hub's fronts, and the router's choice between the local backend and paired peers.

The peers here are real ``PeerLink`` objects that were never connected; their state and capabilities are set
the way their refresh would set them.
"""

from __future__ import annotations

from typing import Any

import pytest

from bus.auth import generate_keypair
from bus.errors import Forbidden, Unavailable, UnknownMethod
from bus.service import Call, Caller, Result
from daemon.hub import Hub
from daemon.modules.peers.link import PeerLink
from daemon.modules.peers.router import LOCAL, Router
from daemon.modules.peers.store import PeerEntry

USER = Caller("zmq", "c1", "user")


def _link(node_id: str, models: list[str], load: int = 0, state: str = "up") -> PeerLink:
    key = generate_keypair().public
    link = PeerLink(PeerEntry(node_id, key, endpoints={"rpc": "tcp://127.0.0.1:9"}), generate_keypair())
    link.state = state
    link.info = {"node_id": node_id, "caps": {"models": models, "load": load}}
    return link


def _hub_with_local_model(model: str) -> Hub:
    hub = Hub()

    async def stats(call: Call) -> dict[str, Any]:
        return {"model": model, "queue": 0, "active": 0}

    async def chat(call: Call) -> dict[str, Any]:
        return {"usage": {"model": model}}

    hub.register("llm.stats", stats, access="device")
    hub.register("llm.chat", chat, stream=True)
    return hub


def _router(hub: Hub, links: list[PeerLink], **kw: Any) -> Router:
    return Router(hub, lambda: links, lambda: {link.peer.key for link in links}, **kw)


def _call(body: dict[str, Any], caller: Caller = USER) -> Call:
    return Call("id1", "llm.chat", body, caller)


async def test_front_sees_the_call_first_and_can_pass_it_on() -> None:
    hub = _hub_with_local_model("m")
    seen = []

    async def front(call: Call, local: Any) -> Result:
        seen.append(call.method)
        return await local(call)

    hub.front("llm.chat", front)
    result = await hub.dispatch(_call({}))
    assert seen == ["llm.chat"]
    assert result == Result("end", {"usage": {"model": "m"}})


async def test_a_front_serves_a_method_no_handler_has() -> None:
    hub = Hub()

    async def front(call: Call, local: Any) -> Result:
        return Result("reply", {"from": "front"})

    assert not hub.serves("llm.stats")
    remove = hub.front("llm.stats", front)
    assert hub.serves("llm.stats")
    assert hub.route("llm.stats") is None
    assert (await hub.dispatch(Call("i", "llm.stats", {}, USER))).body == {"from": "front"}
    remove()
    with pytest.raises(UnknownMethod, match=r"unknown method 'llm\.stats'"):
        await hub.dispatch(Call("i", "llm.stats", {}, USER))


def test_one_front_per_method() -> None:
    hub = Hub()

    async def front(call: Call, local: Any) -> Result:
        return await local(call)

    hub.front("llm.chat", front)
    with pytest.raises(ValueError, match="already has a front"):
        hub.front("llm.chat", front)


async def test_a_call_from_a_paired_peer_is_never_forwarded_again() -> None:
    peer = _link("B", ["big"])
    router = _router(Hub(), [peer])
    caller = Caller("zmq", "c2", "user", key=peer.peer.key)
    assert await router.choose(_call({"model": "big"}, caller)) == LOCAL


async def test_a_named_model_goes_to_the_least_loaded_peer_that_has_it() -> None:
    links = [_link("B", ["big"], load=3), _link("C", ["big"], load=1), _link("D", ["small"], load=0)]
    router = _router(_hub_with_local_model("small"), links)
    assert await router.choose(_call({"model": "big"})) is links[1]


async def test_a_peer_that_is_down_is_not_chosen() -> None:
    links = [_link("B", ["big"], state="down")]
    router = _router(_hub_with_local_model("small"), links)
    assert await router.choose(_call({"model": "big"})) == LOCAL  # fallback_local is on by default


async def test_a_model_nobody_has_is_unavailable_without_the_fallback() -> None:
    router = _router(_hub_with_local_model("small"), [_link("B", ["medium"])], fallback_local=False)
    with pytest.raises(Unavailable, match=r"no daemon that is up has the model 'big'.*have: medium"):
        await router.choose(_call({"model": "big"}))


async def test_the_local_model_serves_requests_that_name_it() -> None:
    router = _router(_hub_with_local_model("small"), [_link("B", ["small"])])
    assert await router.choose(_call({"model": "small"})) == LOCAL


async def test_unnamed_requests_stay_here_unless_peers_are_preferred() -> None:
    links = [_link("B", ["big"])]
    hub = _hub_with_local_model("small")
    assert await _router(hub, links).choose(_call({})) == LOCAL
    assert await _router(hub, links, prefer="peers").choose(_call({})) is links[0]


async def test_no_model_anywhere_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="no LLM backend is loaded here and no paired peer that is up has one"):
        await _router(Hub(), [_link("B", [])]).choose(_call({}))


async def test_a_device_may_not_have_generation_forwarded() -> None:
    links = [_link("B", ["big"])]
    router = _router(_hub_with_local_model("small"), links)

    async def local(call: Call) -> Result:
        raise AssertionError("must not run here")

    device = Caller("zmq", "c3", "device")
    with pytest.raises(Forbidden, match=r"role 'device' may not call 'llm\.chat' \(needs 'user'\)"):
        await router.front_llm(_call({"model": "big"}, device), local)


async def test_forwarding_to_a_link_that_went_down_is_unavailable() -> None:
    link = _link("B", ["big"], state="down")
    link.error = "the connection dropped"
    router = _router(Hub(), [link])
    with pytest.raises(Unavailable, match="peer B is down: the connection dropped"):
        await router.forward(link, _call({"model": "big"}))
