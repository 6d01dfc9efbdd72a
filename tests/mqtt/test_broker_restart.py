"""The broker goes away and comes back: QoS-1 events are neither lost nor duplicated, calls work again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from bus.mqtt_bridge import MqttBridge
from bus.mqtt_link import MqttLink, MqttSettings
from daemon.hub import Hub
from tests.mqtt.broker import Mosquitto
from tests.mqtt.conftest import NODE
from tests.mqtt.helpers import call

EV = f"enigma/{NODE}/event"


class Received:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.changed = asyncio.Event()

    def __call__(self, msg: aiomqtt.Message) -> None:
        self.seqs.append(json.loads(msg.payload)["body"]["n"])
        self.changed.set()

    async def wait_count(self, n: int, within: float = 20.0) -> None:
        async def loop() -> None:
            while len(self.seqs) < n:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(loop(), within)
        except TimeoutError:
            raise AssertionError(f"received {len(self.seqs)} of {n} messages") from None


@pytest.fixture
async def subscriber(broker: Mosquitto) -> AsyncIterator[tuple[MqttLink, Received]]:
    """A subscriber with a persistent session, so the broker keeps its subscription and queue across restarts."""
    got = Received()
    settings = MqttSettings(
        url=broker.url, client_id="restart-sub", session_expiry=600, subscriptions=[(f"{EV}/#", 1)], backoff_max=0.2
    )
    link = MqttLink(settings, on_message=got)
    await link.start()
    await link.wait_connected(10)
    try:
        yield link, got
    finally:
        await link.close()


async def _acks_flushed(link: MqttLink) -> None:
    """A QoS-1 round trip: the broker handles a connection's packets in order, so our earlier PUBACKs are in."""
    await link.publish("sync/point", b"", qos=1)
    assert await link.drain(10)


async def test_broker_restart_loses_and_duplicates_no_qos1_event(
    broker: Mosquitto, hub: Hub, bridge: MqttBridge, subscriber: tuple[MqttLink, Received]
) -> None:
    sub, got = subscriber
    for n in range(200):
        hub.publish("test.seq", {"n": n})
    await got.wait_count(200)
    assert await bridge.link.drain(10)
    await _acks_flushed(sub)

    await asyncio.to_thread(broker.stop)
    assert broker.db.exists()
    await asyncio.wait_for(bridge.link.disconnected.wait(), 10)
    for n in range(200, 400):  # published while the broker is down: held in the bridge's bounded queue
        hub.publish("test.seq", {"n": n})
    assert bridge.link.stats()["queued"] == 200
    await asyncio.to_thread(broker.start)

    await got.wait_count(400)
    assert await bridge.link.drain(10)
    await _acks_flushed(sub)
    assert got.seqs == list(range(400))
    assert bridge.link.stats()["dropped"] == 0


async def test_queue_while_broker_is_away_keeps_newest_within_its_bound(
    broker: Mosquitto, subscriber: tuple[MqttLink, Received]
) -> None:
    _, got = subscriber
    link = MqttLink(MqttSettings(url=broker.url, client_id="bounded-pub", queue_limit=10, backoff_max=0.2))
    await link.start()
    await link.wait_connected(10)
    try:
        await asyncio.to_thread(broker.stop)
        await asyncio.wait_for(link.disconnected.wait(), 10)
        for n in range(25):
            link.publish_nowait(f"{EV}/test/seq", json.dumps({"body": {"n": n}}).encode(), qos=1)
        assert link.stats()["dropped"] == 15
        await asyncio.to_thread(broker.start)
        await got.wait_count(10)
        assert await link.drain(10)
        assert got.seqs == list(range(15, 25))
    finally:
        await link.close()


async def test_bridge_answers_calls_again_after_broker_restart(broker: Mosquitto, bridge: MqttBridge) -> None:
    await asyncio.to_thread(broker.restart)
    await asyncio.wait_for(bridge.link.disconnected.wait(), 10)
    await bridge.link.wait_connected(10)
    envs, _ = await call(broker, f"enigma/{NODE}/rpc/request", {"method": "test.echo", "body": {"after": "restart"}})
    assert envs[0]["body"] == {"echo": {"after": "restart"}}


async def test_unreachable_broker_reports_unavailable_with_address() -> None:
    from bus.errors import Unavailable
    from tests.mqtt.broker import free_port

    port = free_port()
    link = MqttLink(MqttSettings(url=f"mqtt://127.0.0.1:{port}", backoff_max=0.1))
    await link.start()
    try:
        with pytest.raises(Unavailable, match=rf"no MQTT broker answered at 127\.0\.0\.1:{port} within 0\.3s"):
            await link.wait_connected(0.3)
    finally:
        await link.close()


async def test_broker_restart_while_events_flow_loses_none_and_keeps_order(
    broker: Mosquitto, hub: Hub, bridge: MqttBridge, subscriber: tuple[MqttLink, Received]
) -> None:
    """Events keep coming while the broker stops and starts: every one arrives, in order. A message the broker
    took just before it stopped but whose PUBACK we never saw is sent again (QoS 1 is at-least-once), so the
    received stream with such repeats removed must be exactly 0…N-1."""
    _, got = subscriber
    n, restart_at = 600, 200

    async def produce() -> None:
        for i in range(n):
            hub.publish("test.seq", {"n": i})
            if i == restart_at:
                await asyncio.to_thread(broker.restart)
            await asyncio.sleep(0)  # let the bridge's sender run between events, as a live daemon would

    await produce()
    await got.wait_count(n)
    assert await bridge.link.drain(10)
    await _acks_flushed(subscriber[0])
    seen: set[int] = set()
    deduped = [s for s in got.seqs if not (s in seen or seen.add(s))]
    assert deduped == list(range(n))
