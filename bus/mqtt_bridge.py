"""The MQTT transport: hub events out to a broker, method calls in from MQTT-only devices.

Like the ZeroMQ server it is an adapter around ``bus.service.Dispatcher``: decode JSON, work out the caller's
role, ``dispatch(Call(...))``, encode the answer. It never knows which handlers exist.

- Events: every hub event whose topic passes the filter is published as a JSON envelope under
  ``enigma/<node>/event/<topic with / for .>`` with the QoS of its topic class.
- Status: ``enigma/<node>/status`` is retained ``{"state": "online", …}`` while connected; the broker
  publishes the retained ``offline`` last will if the daemon vanishes, and ``close()`` publishes it itself.
- Calls: a JSON ``{"method", "body", "id"?}`` on ``enigma/<node>/rpc/request`` with the MQTT 5 ResponseTopic
  (or a ``reply_to`` field, for MQTT 3.1.1 devices) gets its ``reply``/``error`` — or ``chunk``s then ``end`` —
  published to that topic in order, CorrelationData echoed. ``{"cancel": id}`` stops a stream.
- Roles: MQTT does not tell a subscriber who published a message, so the caller's identity comes from the
  topic: ``…/rpc/request`` is the default role, ``…/rpc/request/<username>`` the role configured for that
  username. The broker's ACL must restrict ``…/rpc/request/%u`` to its own user (docs/mqtt.md shows how).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bus.envelope import MAX_NAME, answer_map, chunk_map, error_map, event_map, new_id
from bus.errors import BadRequest, BusError, Busy, Cancelled, InternalError, TooLarge
from bus.mqtt_link import MqttLink, MqttSettings, Will, publish_properties, reply_address
from bus.mqtt_topics import dumps, event_topic, has_wildcard, node_base, request_topic, status_topic
from bus.service import ROLES, Call, Caller, Dispatcher
from bus.topics import ROBOT_TELEMETRY, SYS_HEARTBEAT

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("enigma.mqtt.bridge")


DEFAULT_EXCLUDE = (SYS_HEARTBEAT, ROBOT_TELEMETRY)


@dataclass
class BridgeConfig:
    node_id: str
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    event_prefixes: list[str] = field(default_factory=lambda: [""])  # hub topic prefixes sent to MQTT
    # Heartbeats are a ZeroMQ liveness signal (MQTT has the retained status), and robots already publish their
    # telemetry on MQTT themselves: neither is worth repeating by default.
    exclude_prefixes: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    qos_events: int = 1
    event_qos: dict[str, int] = field(default_factory=dict)  # per topic-prefix override, longest prefix wins
    qos_rpc: int = 1
    qos_status: int = 1
    roles: dict[str, str] = field(default_factory=dict)  # MQTT username → role
    default_role: str = "device"
    max_request_bytes: int = 256 * 1024
    max_calls: int = 64
    ha_discovery: bool = False

    @classmethod
    def from_mapping(cls, node_id: str, conf: dict[str, Any]) -> BridgeConfig:
        """Build from a ``[modules.mqtt]`` section; a wrong key or type raises ``BadRequest`` naming it."""
        known = {
            "broker",
            "client_id",
            "username",
            "password",
            "ca_file",
            "cert_file",
            "key_file",
            "tls_insecure",
            "keepalive",
            "queue_limit",
            "inflight",
            "node_id",
            "event_prefixes",
            "exclude_prefixes",
            "qos_events",
            "event_qos",
            "qos_rpc",
            "qos_status",
            "roles",
            "default_role",
            "max_request_bytes",
            "max_calls",
            "ha_discovery",
        }
        unknown = sorted(set(conf) - known)
        if unknown:
            raise BadRequest(f"modules.mqtt: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")

        def get(key: str, typ: type | tuple[type, ...], default: Any) -> Any:
            value = conf.get(key, default)
            if value is not None and (not isinstance(value, typ) or (typ is int and isinstance(value, bool))):
                raise BadRequest(f"modules.mqtt.{key} has the wrong type: {type(value).__name__}")
            return value

        def qos(key: str, value: Any) -> int:
            if not isinstance(value, int) or isinstance(value, bool) or value not in (0, 1, 2):
                raise BadRequest(f"modules.mqtt.{key} must be 0, 1 or 2, got {value!r}")
            return value

        def strings(key: str, default: list[str]) -> list[str]:
            value = get(key, list, default)
            if not all(isinstance(v, str) for v in value):
                raise BadRequest(f"modules.mqtt.{key} must be a list of strings")
            return list(value)

        roles = get("roles", dict, {})
        default_role = get("default_role", str, "device")
        for who, role in [*roles.items(), ("default_role", default_role)]:
            if role not in ROLES:
                raise BadRequest(f"modules.mqtt.roles: role of {who!r} must be one of {', '.join(ROLES)}, got {role!r}")
        node = get("node_id", str, None) or node_id
        settings = MqttSettings(
            url=get("broker", str, "mqtt://127.0.0.1:1883"),
            client_id=get("client_id", str, None) or f"enigmad-{node}",
            username=get("username", str, None),
            password=get("password", str, None),
            ca_file=get("ca_file", str, None),
            cert_file=get("cert_file", str, None),
            key_file=get("key_file", str, None),
            tls_insecure=get("tls_insecure", bool, False),
            keepalive=get("keepalive", int, 30),
            queue_limit=get("queue_limit", int, 10_000),
            inflight=get("inflight", int, 256),
        )
        settings.endpoint()
        return cls(
            node_id=node,
            mqtt=settings,
            event_prefixes=strings("event_prefixes", [""]),
            exclude_prefixes=strings("exclude_prefixes", list(DEFAULT_EXCLUDE)),
            qos_events=qos("qos_events", conf.get("qos_events", 1)),
            event_qos={k: qos(f"event_qos.{k}", v) for k, v in get("event_qos", dict, {}).items()},
            qos_rpc=qos("qos_rpc", conf.get("qos_rpc", 1)),
            qos_status=qos("qos_status", conf.get("qos_status", 1)),
            roles=dict(roles),
            default_role=default_role,
            max_request_bytes=get("max_request_bytes", int, 256 * 1024),
            max_calls=get("max_calls", int, 64),
            ha_discovery=get("ha_discovery", bool, False),
        )


class MqttBridge:
    """Bridges a ``Dispatcher`` onto an MQTT broker. ``await start()`` … ``await close()``."""

    def __init__(self, dispatcher: Dispatcher, config: BridgeConfig, *, boot_id: str | None = None) -> None:
        self.dispatcher = dispatcher
        self.config = config
        self.boot_id = boot_id or new_id()
        node = config.node_id
        self.base = node_base(node)
        self.t_status = status_topic(node)
        self.t_request = request_topic(node)
        settings = config.mqtt
        settings.will = Will(self.t_status, self._status_payload("offline"), config.qos_status, True)
        settings.subscriptions = [(self.t_request, config.qos_rpc), (self.t_request + "/+", config.qos_rpc)]
        self.link = MqttLink(settings, on_message=self._on_message, on_connect=self._on_connect)
        self._calls: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._topic_cache: dict[str, tuple[str, int] | None] = {}
        self._remove_listener: Any = None
        self._extra_on_connect: list[Any] = []
        self._stats = {"events": 0, "requests": 0, "errors": 0, "rejected": 0, "unanswerable": 0}

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self, wait: float | None = None) -> None:
        """Listen to the hub and connect; with ``wait``, raise ``Unavailable`` if the broker is not up in time."""
        self._remove_listener = self.dispatcher.add_listener("", self._on_event)
        await self.link.start()
        if wait is not None:
            await self.link.wait_connected(wait)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a budget shared by several steps
        """Stop listening, end in-flight calls with ``cancelled``, publish ``offline``, flush, disconnect."""
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        calls = list(self._calls.values())
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=timeout)
        if self.link.connected.is_set():
            self.link.publish_nowait(self.t_status, self._status_payload("offline"), self.config.qos_status, True)
        await self.link.close(timeout)

    def on_connect(self, hook: Any) -> None:
        """Run ``hook()`` after every (re)connect, e.g. to publish retained discovery configs."""
        self._extra_on_connect.append(hook)

    def stats(self) -> dict[str, Any]:
        return {**self._stats, "calls": len(self._calls), "link": self.link.stats()}

    def _status_payload(self, state: str) -> bytes:
        return dumps({"state": state, "node_id": self.config.node_id, "boot_id": self.boot_id, "ts": time.time()})

    def _on_connect(self) -> None:
        self.link.publish_nowait(self.t_status, self._status_payload("online"), self.config.qos_status, True)
        for hook in self._extra_on_connect:
            hook()

    # -- events out -------------------------------------------------------------------------------------------
    def _route(self, topic: str) -> tuple[str, int] | None:
        """(MQTT topic, QoS) for a hub topic, or None when the filter excludes it. Cached per topic."""
        if topic in self._topic_cache:
            return self._topic_cache[topic]
        c = self.config
        route: tuple[str, int] | None = None
        if any(topic.startswith(p) for p in c.event_prefixes) and not any(
            topic.startswith(p) for p in c.exclude_prefixes
        ):
            qos = c.qos_events
            best = -1
            for prefix, q in c.event_qos.items():
                if topic.startswith(prefix) and len(prefix) > best:
                    qos, best = q, len(prefix)
            route = (event_topic(c.node_id, topic), qos)
        if len(self._topic_cache) > 4096:
            self._topic_cache.clear()
        self._topic_cache[topic] = route
        return route

    def _on_event(self, topic: str, body: dict[str, Any]) -> None:
        route = self._route(topic)
        if route is None:
            return
        payload = dumps(event_map(new_id(), topic, body, time.time()))
        self._stats["events"] += 1
        self.link.publish_nowait(route[0], payload, route[1])

    # -- calls in ---------------------------------------------------------------------------------------------
    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic == self.t_request:
            self._on_request(message, None)
        elif topic.startswith(self.t_request + "/"):
            self._on_request(message, topic[len(self.t_request) + 1 :])

    def _reply_target(self, message: aiomqtt.Message, obj: Any) -> tuple[str | None, bytes | None]:
        response, correlation = reply_address(message)
        if not response and isinstance(obj, dict) and isinstance(obj.get("reply_to"), str):
            response = obj["reply_to"]
        if not response:
            return None, None
        return response, correlation

    def _allowed_reply_topic(self, topic: str) -> bool:
        """Answers may go anywhere a device listens, except wildcards and our own namespace (no spoofing)."""
        if has_wildcard(topic) or len(topic) > 1024:
            return False
        return not topic.startswith(self.base + "/") or topic.startswith(self.base + "/rpc/response/")

    def _on_request(self, message: aiomqtt.Message, username: str | None) -> None:
        self._stats["requests"] += 1
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        obj: Any = None
        error: BusError | None = None
        if len(payload) > self.config.max_request_bytes:
            error = TooLarge(f"request of {len(payload)} bytes exceeds the limit of {self.config.max_request_bytes}")
        else:
            try:
                obj = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                error = BadRequest(f"request is not valid JSON: {exc}")
        response, correlation = self._reply_target(message, obj)
        if response is None:
            self._stats["unanswerable"] += 1
            log.warning("MQTT request on %s without a response topic dropped", message.topic.value)
            return
        if not self._allowed_reply_topic(response):
            self._stats["rejected"] += 1
            log.warning("MQTT request with a forbidden response topic %r dropped", response)
            return
        rid = obj.get("id") if isinstance(obj, dict) else None
        if not isinstance(rid, str) or not 0 < len(rid) <= MAX_NAME:
            rid = new_id()
        if error is None:
            error, method, body = self._validate(obj)
        if error is not None:
            self._send_error(response, correlation, rid, error)
            return
        peer = username or "anonymous"
        if method is None:  # a cancel
            task = self._calls.get((peer, obj["cancel"]))
            if task is not None:
                task.cancel()
            return
        key = (peer, rid)
        if len(self._calls) >= self.config.max_calls or key in self._calls:
            err: BusError = Busy(f"too many calls in progress (limit {self.config.max_calls})")
            if key in self._calls:
                err = BadRequest(f"a call with id {rid!r} is already in progress")
            self._send_error(response, correlation, rid, err)
            return
        role = self.config.roles.get(username, self.config.default_role) if username else self.config.default_role
        caller = Caller("mqtt", peer, role)
        task = asyncio.create_task(self._serve(key, rid, method, body, caller, response, correlation))
        self._calls[key] = task

    def _validate(self, obj: Any) -> tuple[BusError | None, str | None, dict[str, Any]]:
        if not isinstance(obj, dict):
            return BadRequest(f"request must be a JSON object, got {type(obj).__name__}"), None, {}
        if "cancel" in obj:
            if not isinstance(obj["cancel"], str):
                return BadRequest("'cancel' must be the id of a call in progress"), None, {}
            return None, None, {}
        method = obj.get("method")
        if not isinstance(method, str) or not method or len(method) > MAX_NAME:
            return BadRequest("'method' must be a non-empty string of at most 128 characters"), None, {}
        body = obj.get("body", {})
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return BadRequest(f"'body' must be a JSON object, got {type(body).__name__}"), None, {}
        return None, method, body

    def _send(self, topic: str, correlation: bytes | None, env: dict[str, Any]) -> None:
        self.link.publish_nowait(topic, dumps(env), self.config.qos_rpc, False, publish_properties(correlation))

    def _send_error(self, topic: str, correlation: bytes | None, rid: str, error: BusError) -> None:
        self._stats["errors"] += 1
        self._send(topic, correlation, error_map(new_id(), rid, error))

    async def _serve(
        self,
        key: tuple[str, str],
        rid: str,
        method: str,
        body: dict[str, Any],
        caller: Caller,
        response: str,
        correlation: bytes | None,
    ) -> None:
        props = publish_properties(correlation)
        seq = 0

        async def emit(chunk: dict[str, Any]) -> None:
            nonlocal seq
            env = chunk_map(new_id(), rid, seq, chunk)
            seq += 1
            await self.link.publish(response, dumps(env), self.config.qos_rpc, False, props)

        out: dict[str, Any]
        try:
            result = await self.dispatcher.dispatch(Call(rid, method, body, caller, emit))
            out = answer_map(result.kind, new_id(), rid, result.body)
        except asyncio.CancelledError:
            self._send_error(response, correlation, rid, Cancelled(f"{method} was cancelled"))
            raise
        except BusError as exc:
            out = error_map(new_id(), rid, exc)
        except Exception as exc:
            log.exception("MQTT call %s failed", method)
            out = error_map(new_id(), rid, InternalError(f"{method} failed: {exc}"))
        finally:
            self._calls.pop(key, None)
        if out["kind"] == "error":
            self._stats["errors"] += 1
        self._send(response, correlation, out)
