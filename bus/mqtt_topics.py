"""The MQTT topic layout in one place (see docs/mqtt.md), and the JSON form of bus envelopes.

Hub topics are dotted (``module.state``); MQTT levels are slash-separated, so ``module.state`` is published
under ``enigma/<node>/event/module/state``. ``+`` and ``#`` are wildcards in MQTT and never appear in a topic
we publish: they are replaced by ``_``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

ROOT: Final = "enigma"
ROBOT_ROOT: Final = "enigma/robot"
ALL_ROBOTS: Final = "all"
HA_ROOT: Final = "homeassistant"
# The levels under a robot's ``enigma/robot/<id>/``: commands in, e-stop in (also under ``all``), command
# replies out, its announced state (retained), online/offline (retained, the last will) and telemetry.
ROBOT_CMD: Final = "cmd"
ROBOT_ESTOP: Final = "estop"
ROBOT_REPLY: Final = "reply"
ROBOT_STATE: Final = "state"
ROBOT_STATUS: Final = "status"
ROBOT_TELEMETRY: Final = "telemetry"


def level(name: str) -> str:
    """One safe topic level: no separators, no wildcards, never empty."""
    cleaned = name.replace("/", "_").replace("+", "_").replace("#", "_").replace("\x00", "_")
    return cleaned or "_"


def node_base(node_id: str) -> str:
    return f"{ROOT}/{level(node_id)}"


def status_topic(node_id: str) -> str:
    return f"{node_base(node_id)}/status"


def request_topic(node_id: str) -> str:
    return f"{node_base(node_id)}/rpc/request"


def response_topic(node_id: str, name: str) -> str:
    """Where ``name``'s answers to its MQTT 5 requests come back (their response topic)."""
    return f"{node_base(node_id)}/rpc/response/{level(name)}"


def event_topic(node_id: str, topic: str) -> str:
    return f"{node_base(node_id)}/event/" + "/".join(level(p) for p in topic.split("."))


def robot_topic(robot_id: str, leaf: str) -> str:
    """``enigma/robot/<id>/<leaf>`` with leaf one of cmd, telemetry, state, status, reply, estop."""
    return f"{ROBOT_ROOT}/{level(robot_id)}/{leaf}"


def has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> bytes:
    """Compact JSON; bytes become base64 strings and unknown objects their ``str`` (never a crash)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()
