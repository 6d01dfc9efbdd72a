"""Calling the daemon over MQTT, for clients that live on the broker anyway (game overlays, scripts on a Pi).

``MqttCaller`` sends requests to ``enigma/<node>/rpc/request[/<username>]`` with a ResponseTopic private to
this client (``enigma/<node>/rpc/response/<client id>``, the one place under the node's tree the bridge
answers to) and CorrelationData, and turns the answer back into a body or the matching ``bus.errors``
exception. ``subscribe_events`` delivers the bridge's event envelopes as ``(topic, body, ts)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bus.envelope import new_id
from bus.errors import BusError, InternalError, Timeout
from bus.mqtt_link import MqttLink, MqttSettings, publish_properties, reply_address
from bus.mqtt_topics import dumps, level, node_base, request_topic, response_topic

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("enigma.mqtt.client")

EventHandler = Callable[[str, dict[str, Any], float | None], None]


class MqttCaller:
    """An MQTT link that can call methods and watch events. ``await start(wait)`` … ``await close()``."""

    def __init__(
        self,
        settings: MqttSettings,
        node_id: str,
        *,
        as_user: str | None = None,
        event_prefixes: tuple[str, ...] = (),
        on_event: EventHandler | None = None,
    ) -> None:
        self.node_id = node_id
        settings.client_id = settings.client_id or f"enigma-client-{new_id()[:12]}"
        self.reply_topic = response_topic(node_id, settings.client_id)
        self.t_request = request_topic(node_id) + (f"/{level(as_user)}" if as_user else "")
        self._event_base = f"{node_base(node_id)}/event/"
        subs = [(self.reply_topic, 1)] + [(self._event_filter(p), 1) for p in event_prefixes]
        settings.subscriptions = subs
        self.link = MqttLink(settings, on_message=self._on_message)
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._on_event = on_event

    def _event_filter(self, prefix: str) -> str:
        """``"chat."`` → ``…/event/chat/#`` (a subtree), ``"game.state"`` → ``…/event/game/state``, ``""`` → all."""
        if not prefix:
            return self._event_base + "#"
        flt = self._event_base + "/".join(level(p) for p in prefix.rstrip(".").split("."))
        return flt + "/#" if prefix.endswith(".") else flt

    async def start(self, wait: float | None = None) -> None:
        await self.link.start()
        if wait is not None:
            await self.link.wait_connected(wait)

    async def close(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        await self.link.close()

    async def call(self, method: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109 - becomes bus.errors.Timeout
        """One unary call; raises the ``bus.errors`` class of the daemon's error, or ``Timeout``."""
        rid = new_id()
        corr = rid.encode()
        props = publish_properties(corr, self.reply_topic)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        try:
            await self.link.publish(
                self.t_request, dumps({"method": method, "body": body or {}, "id": rid}), 1, False, props
            )
            env = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Timeout(f"no answer to {method} over MQTT within {timeout:g}s (is the mqtt module loaded?)") from None
        finally:
            self._pending.pop(corr, None)
        if env.get("kind") == "error":
            raise BusError.from_body(env.get("body"))
        if env.get("kind") != "reply":
            raise InternalError(f"{method} answered with {env.get('kind')!r}, not a reply (use a streaming client)")
        result = env.get("body")
        return result if isinstance(result, dict) else {}

    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        try:
            env = json.loads(message.payload)
        except (ValueError, TypeError):
            log.warning("invalid JSON on %s", topic)
            return
        if not isinstance(env, dict):
            return
        if topic == self.reply_topic:
            _, corr = reply_address(message)
            fut = self._pending.get(corr) if corr is not None else None
            if fut is not None and not fut.done():
                fut.set_result(env)
            return
        if topic.startswith(self._event_base) and self._on_event is not None:
            body = env.get("body")
            ts = env.get("ts")
            self._on_event(
                str(env.get("topic", "")),
                body if isinstance(body, dict) else {},
                float(ts) if isinstance(ts, int | float) else None,
            )
