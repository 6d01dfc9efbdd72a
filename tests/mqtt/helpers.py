"""A small MQTT test client: subscribe, collect, wait for a condition with a timeout; and an RPC caller."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mqtt.broker import Mosquitto


class Collector:
    """Everything that arrives on the subscribed filters, in order; ``wait_for`` blocks on a predicate."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async for m in self.client.messages:
            self.messages.append(m)
            self._changed.set()

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if m.topic.value == topic]

    def json_on(self, topic: str) -> list[Any]:
        return [json.loads(m.payload) for m in self.on(topic)]

    async def wait_for(self, pred: Callable[[], bool], within: float = 10.0, what: str = "condition") -> None:
        async def loop() -> None:
            while not pred():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(loop(), within)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {within}s waiting for {what}; got {len(self.messages)} messages"
            ) from None


@contextlib.asynccontextmanager
async def collector(broker: Mosquitto, *filters: str, qos: int = 1, **kw: Any) -> AsyncIterator[Collector]:
    async with aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, **kw) as client:
        for f in filters:
            await client.subscribe(f, qos)
        c = Collector(client)
        task = asyncio.create_task(c._run())
        try:
            yield c
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


def request_props(response: str, correlation: bytes | None) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response
    if correlation is not None:
        props.CorrelationData = correlation
    return props


async def call(
    broker: Mosquitto,
    topic: str,
    request: Any,
    *,
    correlation: bytes | None = b"corr-1",
    response: str = "dev/answers",
    raw: bytes | None = None,
    until: Callable[[list[Any]], bool] | None = None,
    within: float = 10.0,
) -> tuple[list[Any], list[aiomqtt.Message]]:
    """Publish one request with ResponseTopic/CorrelationData and collect answers until a final one."""
    final = until or (lambda envs: bool(envs) and envs[-1]["kind"] in ("reply", "end", "error"))
    async with collector(broker, response) as c:
        payload = raw if raw is not None else json.dumps(request).encode()
        await c.client.publish(topic, payload, qos=1, properties=request_props(response, correlation))
        await c.wait_for(lambda: final(c.json_on(response)), within, what=f"answer on {response}")
        return c.json_on(response), c.on(response)
