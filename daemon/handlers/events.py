"""``bus.publish`` and ``event.replay``: clients publish through the daemon (so roles apply) and catch up."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bus.errors import Forbidden
from bus.service import Call
from daemon.handlers import Core
from daemon.hub import Hub
from daemon.topics import RESERVED_PREFIXES

TOPIC_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
PUBLISH_SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"type": "string", "maxLength": 128, "pattern": TOPIC_PATTERN},
        "body": {"type": "object"},
    },
    "required": ["topic"],
}
REPLAY_MAX = 1000
REPLAY_SCHEMA = {
    "type": "object",
    "properties": {
        "prefix": {"type": "string", "maxLength": 128},
        "limit": {"type": "integer", "minimum": 0, "maximum": REPLAY_MAX},
    },
}


def register(hub: Hub, core: Core) -> list[Callable[[], None]]:
    async def publish(call: Call) -> dict[str, Any]:
        """Publish ``{"topic", "body"}`` as an event to every subscriber; replies ``{"topic", "ts"}``.
        Topics under ``sys.`` and ``module.`` belong to the daemon: ``forbidden``."""
        topic: str = call.body["topic"]
        if topic.startswith(RESERVED_PREFIXES):
            raise Forbidden(f"topic {topic!r} is reserved for the daemon (prefixes {', '.join(RESERVED_PREFIXES)})")
        hub.publish(topic, call.body.get("body") or {})
        return {"topic": topic, "ts": time.time()}

    async def replay(call: Call) -> dict[str, Any]:
        """The last ``limit`` (default 50, at most 1000) kept events whose topic starts with ``prefix`` (default
        all), oldest first: ``{"events": [{"topic", "body", "ts"}]}``. The hub keeps the last 50 per topic."""
        events = hub.replay(call.body.get("prefix", ""), call.body.get("limit", 50))
        return {"events": [{"topic": e.topic, "body": e.body, "ts": e.ts} for e in events]}

    return [
        hub.register("bus.publish", publish, access="device", schema=PUBLISH_SCHEMA),
        hub.register("event.replay", replay, access="device", schema=REPLAY_SCHEMA),
    ]
