"""Event fan-out: prefix filters, heartbeats with boot_id, restart detection and bounded queues."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bus.zmq_server import ServerLimits
from clients.sdk import Client, Event, Subscription
from tests.bus.conftest import Probes, Rig, build_hub, make_server


async def next_event(sub: AsyncIterator[Event], within: float = 5.0) -> Event:
    return await asyncio.wait_for(sub.__anext__(), within)


async def wait_subscribed(rig: Rig, sub: Subscription, topic: str) -> Event:
    """Subscriptions travel asynchronously: publish a marker until it arrives, so later events are not lost."""

    async def loop() -> Event:
        while True:
            rig.hub.publish(topic, {"marker": True})
            try:
                return await asyncio.wait_for(sub.__anext__(), 0.05)
            except TimeoutError:
                continue

    return await asyncio.wait_for(loop(), 5)


async def test_subscription_gets_only_topics_with_its_prefix(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.subscribe("module.") as sub:
        await wait_subscribed(rig, sub, "module.marker")
        rig.hub.publish("chat.message", {"text": "not for us"})
        rig.hub.publish("modulex.state", {"no": "prefix is module., not module"})
        rig.hub.publish("module.state", {"name": "llm", "state": "loaded"})
        ev = await next_event(sub)
        assert (ev.topic, ev.body) == ("module.state", {"name": "llm", "state": "loaded"})
        assert isinstance(ev.ts, float)


async def test_two_subscriptions_on_one_client_each_get_their_prefix(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.subscribe("a.") as a, c.subscribe("b.") as b:
        await wait_subscribed(rig, a, "a.marker")
        await wait_subscribed(rig, b, "b.marker")
        rig.hub.publish("b.two", {})
        rig.hub.publish("a.one", {})
        assert (await next_event(a)).topic == "a.one"
        assert (await next_event(b)).topic == "b.two"


async def test_heartbeat_event_carries_node_and_boot_id(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5) as c, c.subscribe("sys.heartbeat") as sub:
        ev = await next_event(sub)
        assert ev.body["boot_id"] == "boot-1"
        assert ev.body["node_id"] == "test-node"
        assert c.boot_id == "boot-1"


async def heartbeat_from(sub: Subscription, boot_id: str) -> Event:
    while True:
        ev = await next_event(sub)
        if ev.body.get("boot_id") == boot_id:
            return ev


async def test_subscription_resumes_after_daemon_restart_with_new_boot_id() -> None:
    probes = Probes()
    hub = build_hub(probes)
    first = make_server(hub, boot_id="boot-A")
    await first.start()
    rpc, events = first.endpoints["rpc"], first.endpoints["events"]
    async with Client(rpc, events, timeout=5) as c, c.subscribe("job.") as sub, c.subscribe("sys.heartbeat") as hb:
        await wait_subscribed(Rig(hub, first, probes), sub, "job.marker")
        await heartbeat_from(hb, "boot-A")
        assert c.boot_id == "boot-A"
        await first.close(timeout=2)

        second = make_server(hub, boot_id="boot-B", rpc=rpc, events=events)  # same ports, new boot
        await second.start()
        try:
            await heartbeat_from(hb, "boot-B")
            assert c.boot_id == "boot-B"
            ev = await wait_subscribed(Rig(hub, second, probes), sub, "job.after-restart")
            assert ev.topic == "job.after-restart"
            assert await c.call("sys.ping") == {"pong": True}
        finally:
            await second.close(timeout=2)


async def test_full_event_queue_drops_oldest_and_counts() -> None:
    probes = Probes()
    hub = build_hub(probes)
    server = make_server(hub, limits=ServerLimits(event_queue=10))
    await server.start()
    try:
        for i in range(25):  # all published before the sender task runs once
            hub.publish("flood.x", {"i": i})
        assert server.stats()["dropped"] == 15
        assert [body["i"] for _, body in server._fanout.queue] == list(range(15, 25))
    finally:
        await server.close(timeout=2)


async def test_subscription_drops_oldest_when_consumer_is_slow(rig: Rig) -> None:
    async with Client(rig.rpc, rig.events, timeout=5, max_event_queue=3) as c, c.subscribe("s.") as sub:
        await wait_subscribed(rig, sub, "s.marker")
        async with c.subscribe("s.last") as last:
            await wait_subscribed(rig, last, "s.last")
            for i in range(10):
                rig.hub.publish("s.x", {"i": i})
            rig.hub.publish("s.last", {})
            await next_event(last)  # everything before it has reached the client
        got = [(await next_event(sub)).body.get("i") for _ in range(3)]
        assert got == [8, 9, None]
        assert sub.dropped >= 8
