"""``robots``: knows every robot on the broker from its announcements, and commands them for bus callers.

It subscribes to ``enigma/robot/+/{status,state,telemetry}`` (see ``clients.robot.node``) and keeps the last of
each per robot. ``robot.command`` publishes to the robot's ``cmd`` topic with an MQTT 5 ResponseTopic private to
this daemon and CorrelationData, and returns the robot's answer (a refusal becomes the matching bus error).
``{"action": "estop"}`` goes to the robot's e-stop topic instead, and with ``"id": "all"`` to every robot's.

Events: ``robot.state`` ``{"id", "online", "state", …announcement}`` whenever a robot's status or motion state
changes; ``robot.telemetry`` ``{"id", …telemetry}`` for each telemetry message.

Config ``[modules.robots]``: ``broker``, ``username``, ``password``, ``ca_file``, ``cert_file``, ``key_file``,
``tls_insecure``, ``command_timeout`` (seconds, default 5), ``connect_timeout`` (default 10), ``ha_discovery``
(publish Home Assistant discovery configs for each robot seen; default false).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from bus import mqtt_topics
from bus.envelope import new_id
from bus.errors import BadRequest, BusError, NotFound, Timeout, Unavailable
from bus.mqtt_ha import robot_discovery
from bus.mqtt_link import MqttLink, MqttSettings, publish_properties, reply_address
from bus.mqtt_topics import ALL_ROBOTS, ROBOT_ROOT, dumps, response_topic, robot_topic
from bus.service import Call
from bus.topics import ROBOT_STATE, ROBOT_TELEMETRY
from daemon.module import Module, method

if TYPE_CHECKING:
    import aiomqtt

ID = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^/+#]+$"}
STATE_SCHEMA = {"type": "object", "properties": {"id": ID}, "required": ["id"]}
COMMAND_SCHEMA = {
    "type": "object",
    "properties": {
        "id": ID,
        "action": {"type": "string", "minLength": 1, "maxLength": 64},
        "params": {"type": "object"},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
    },
    "required": ["id", "action"],
}
_SETTINGS_KEYS = ("username", "password", "ca_file", "cert_file", "key_file")
_SECONDS = {"type": "number", "exclusiveMinimum": 0}
CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "broker": {"type": "string", "default": "mqtt://127.0.0.1:1883"},
        **{key: {"type": "string"} for key in _SETTINGS_KEYS},
        "tls_insecure": {"type": "boolean", "default": False},
        "command_timeout": {**_SECONDS, "default": 5.0},
        "connect_timeout": {**_SECONDS, "default": 10.0},
        "ha_discovery": {"type": "boolean", "default": False},
    },
    "additionalProperties": False,
}


class RobotsModule(Module):
    name = "robots"
    description = "Tracks robots on the MQTT broker and sends them commands (robot.list/state/command)."
    config_schema = CONFIG_SCHEMA

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.robots: dict[str, dict[str, Any]] = {}
        self.link: MqttLink | None = None
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self.reply_topic = response_topic(ctx.node_id, "robots")
        self.ha_discovery = False

    def _settings(self) -> tuple[MqttSettings, float, float]:
        conf = self.ctx.config
        settings = MqttSettings(
            url=conf["broker"],
            client_id=f"enigmad-{self.ctx.node_id}-robots",
            tls_insecure=conf["tls_insecure"],
            subscriptions=[
                (f"{ROBOT_ROOT}/+/{mqtt_topics.ROBOT_STATUS}", 1),
                (f"{ROBOT_ROOT}/+/{mqtt_topics.ROBOT_STATE}", 1),
                (f"{ROBOT_ROOT}/+/{mqtt_topics.ROBOT_TELEMETRY}", 0),
                (self.reply_topic, 1),
            ],
            **{k: conf[k] for k in _SETTINGS_KEYS if k in conf},
        )
        settings.endpoint()
        self.ha_discovery = conf["ha_discovery"]
        return settings, float(conf["command_timeout"]), float(conf["connect_timeout"])

    async def load(self) -> None:
        settings, self.command_timeout, connect_timeout = self._settings()
        self.link = MqttLink(settings, on_message=self._on_message)
        await self.link.start()
        try:
            await self.link.wait_connected(connect_timeout)
        except Unavailable:
            await self.link.close(1.0)
            self.link = None
            raise
        self.ctx.serve(self)

    async def unload(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("the robots module is unloading"))
        self._pending.clear()
        if self.link is not None:
            await self.link.close()
            self.link = None

    def info(self) -> dict[str, Any]:
        return {"robots": len(self.robots), "online": sum(1 for r in self.robots.values() if r["online"])}

    # -- what the robots say ----------------------------------------------------------------------------------
    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic == self.reply_topic:
            self._on_reply(message)
            return
        parts = topic.split("/")
        if len(parts) != 4 or parts[2] == ALL_ROBOTS or not message.payload:
            return
        robot_id, leaf = parts[2], parts[3]
        try:
            body = json.loads(message.payload)
        except (ValueError, TypeError):
            self.ctx.log.warning("robot %s sent invalid JSON on %s", robot_id, leaf)
            return
        if not isinstance(body, dict):
            return
        new = robot_id not in self.robots
        rec = self.robots.setdefault(
            robot_id, {"id": robot_id, "online": False, "state": "unknown", "announcement": {}, "telemetry": {}}
        )
        rec["last_seen"] = time.time()
        if new and self.ha_discovery and self.link is not None:
            for topic_, payload in robot_discovery(robot_id):
                self.link.publish_nowait(topic_, payload, 1, True)
        if leaf == mqtt_topics.ROBOT_TELEMETRY:
            rec["telemetry"] = body
            self.ctx.publish(ROBOT_TELEMETRY, {**body, "id": robot_id})
            return
        before = (rec["online"], rec["state"])
        if leaf == mqtt_topics.ROBOT_STATUS:
            rec["online"] = body.get("state") == "online"
        elif leaf == mqtt_topics.ROBOT_STATE:
            rec["announcement"] = body
            rec["state"] = str(body.get("state", "unknown"))
        if new or (rec["online"], rec["state"]) != before:
            self.ctx.publish(ROBOT_STATE, self._summary(rec))

    def _on_reply(self, message: aiomqtt.Message) -> None:
        _, corr = reply_address(message)
        fut = self._pending.pop(corr, None) if corr is not None else None
        if fut is None or fut.done():
            return
        try:
            body = json.loads(message.payload)
        except ValueError:
            fut.set_exception(BusError.from_body({"code": "internal", "message": "robot sent an invalid reply"}))
            return
        fut.set_result(body if isinstance(body, dict) else {"ok": False, "error": {"code": "internal"}})

    def _summary(self, rec: dict[str, Any]) -> dict[str, Any]:
        ann = rec["announcement"]
        tel = rec["telemetry"]
        return {
            "id": rec["id"],
            "online": rec["online"],
            "state": rec["state"],
            "driver": ann.get("driver"),
            "battery": tel.get("battery"),
            "pose": tel.get("pose"),
            "last_seen": rec.get("last_seen"),
        }

    # -- handlers ---------------------------------------------------------------------------------------------
    @method("robot.list", access="device", summary="robots seen on the broker")
    async def list_robots(self, call: Call) -> dict[str, Any]:
        """Every robot seen on the broker, online or not, with its motion state, battery and pose."""
        return {"robots": [self._summary(r) for _, r in sorted(self.robots.items())]}

    def _robot(self, robot_id: str) -> dict[str, Any]:
        rec = self.robots.get(robot_id)
        if rec is None:
            raise NotFound(
                f"no robot {robot_id!r} has announced itself (known: {', '.join(sorted(self.robots)) or 'none'})"
            )
        return rec

    @method("robot.state", access="device", schema=STATE_SCHEMA)
    async def robot_state(self, call: Call) -> dict[str, Any]:
        """One robot: its announcement (driver, actions, limits) and its latest telemetry."""
        rec = self._robot(call.body["id"])
        return {**self._summary(rec), "announcement": rec["announcement"], "telemetry": rec["telemetry"]}

    @method("robot.command", access="user", schema=COMMAND_SCHEMA)
    async def robot_command(self, call: Call) -> dict[str, Any]:
        """Send one command and return the robot's answer; a refusal raises the robot's error code."""
        assert self.link is not None
        robot_id, action = call.body["id"], call.body["action"]
        params = call.body.get("params", {})
        if action == "estop":
            topic = robot_topic(robot_id, mqtt_topics.ROBOT_ESTOP)
            if robot_id != ALL_ROBOTS:
                self._robot(robot_id)
            await self.link.publish(topic, dumps({"by": call.caller.peer}), qos=1)
            return {"sent": topic}
        rec = self._robot(robot_id)
        if not rec["online"]:
            raise Unavailable(f"robot {robot_id!r} is offline")
        if "id" in params or "action" in params:
            raise BadRequest("params may not contain 'id' or 'action'")
        cid = new_id()
        corr = cid.encode()
        props = publish_properties(corr, self.reply_topic)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = fut
        timeout = float(call.body.get("timeout", self.command_timeout))
        try:
            await self.link.publish(
                robot_topic(robot_id, mqtt_topics.ROBOT_CMD),
                dumps({"id": cid, "action": action, **params}),
                1,
                False,
                props,
            )
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise Timeout(f"robot {robot_id!r} did not answer {action!r} within {timeout:g}s") from None
        finally:
            self._pending.pop(corr, None)
        if not reply.get("ok"):
            raise BusError.from_body(reply.get("error"))
        result = reply.get("result")
        return {"id": robot_id, "action": action, "result": result if isinstance(result, dict) else {}}
