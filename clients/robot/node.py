"""A robot on the broker: takes commands over MQTT, runs the control loop, reports what it does.

Topics (``enigma/robot/<id>/…``):
- ``cmd`` in: a JSON command (see ``clients.robot.commands``); the answer goes to the MQTT 5 ResponseTopic
  when the command has one (CorrelationData echoed), else to ``reply``: ``{"id", "ok": true, "result"}`` or
  ``{"id", "ok": false, "error": {"code", "message"}}``.
- ``estop`` and ``enigma/robot/all/estop`` in: any message halts the robot at once (latched until ``reset``).
- ``status`` out, retained: ``{"state": "online"|"offline"}``; the broker publishes ``offline`` as the last will.
- ``state`` out, retained: the announcement (driver, actions, limits) plus the motion state; republished
  whenever the motion state changes.
- ``telemetry`` out at ``rate`` Hz: pose, wheels, battery, … (QoS 0: the next one supersedes it).

Commands sent while the robot was offline are not replayed (clean sessions): a robot must not act on stale
orders. Retained commands are refused for the same reason. Losing the broker stops motion like the dead-man.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bus.mqtt_link import MqttLink, MqttSettings, Will, publish_properties, reply_address
from bus.mqtt_topics import (
    ALL_ROBOTS,
    ROBOT_CMD,
    ROBOT_ESTOP,
    ROBOT_REPLY,
    ROBOT_STATE,
    ROBOT_STATUS,
    ROBOT_TELEMETRY,
    dumps,
    has_wildcard,
    robot_topic,
)
from clients.robot.commands import CommandError, Limits, parse_command
from clients.robot.controller import Controller
from clients.robot.drivers.base import Driver

if TYPE_CHECKING:
    import aiomqtt

log = logging.getLogger("enigma.robot")


class RobotNode:
    """One robot process's brain. ``clock`` is injectable; with ``autorun=False`` the caller drives ``step``."""

    def __init__(
        self,
        robot_id: str,
        driver: Driver,
        settings: MqttSettings,
        *,
        limits: Limits | None = None,
        rate: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        autorun: bool = True,
    ) -> None:
        self.id = robot_id
        self.driver = driver
        self.limits = limits or Limits()
        self.rate = rate
        self.clock = clock
        self.autorun = autorun
        self.controller = Controller(driver, self.limits, clock())
        self.t_cmd = robot_topic(robot_id, ROBOT_CMD)
        self.t_estop = robot_topic(robot_id, ROBOT_ESTOP)
        self.t_all_estop = robot_topic(ALL_ROBOTS, ROBOT_ESTOP)
        self.t_reply = robot_topic(robot_id, ROBOT_REPLY)
        self.t_state = robot_topic(robot_id, ROBOT_STATE)
        self.t_status = robot_topic(robot_id, ROBOT_STATUS)
        self.t_telemetry = robot_topic(robot_id, ROBOT_TELEMETRY)
        settings.client_id = settings.client_id or f"enigma-robot-{robot_id}"
        settings.will = Will(self.t_status, dumps({"id": robot_id, "state": "offline"}), 1, True)
        settings.subscriptions = [(self.t_cmd, 1), (self.t_estop, 1), (self.t_all_estop, 1)]
        self.link = MqttLink(settings, on_message=self._on_message, on_connect=self._on_connect)
        self._last_state = self.controller.state
        self._last_telemetry = -float("inf")
        self._loop_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.rejected = 0

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self, wait: float | None = None) -> None:
        await self.link.start()
        if wait is not None:
            await self.link.wait_connected(wait)
        self._watch_task = asyncio.create_task(self._watch_link())
        if self.autorun:
            self._loop_task = asyncio.create_task(self._run())

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - passed to the link
        self.controller.estop("shutting down")
        for task in (self._loop_task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._watch_task = None
        if self.link.connected.is_set():
            self.link.publish_nowait(self.t_status, dumps({"id": self.id, "state": "offline"}), 1, True)
        await self.link.close(timeout)
        self.driver.close()

    async def _run(self) -> None:
        """The wall-clock control loop: one ``step`` per tick."""
        while True:
            self.step(self.clock())
            await asyncio.sleep(self.limits.tick)

    async def _watch_link(self) -> None:
        """Losing the broker means losing the operator: stop moving until someone is listening again."""
        while True:
            await self.link.disconnected.wait()
            if self.controller.goal is not None:
                log.warning("robot %s: broker connection lost, stopping", self.id)
                self.controller.halt()
            await self.link.connected.wait()

    # -- control ----------------------------------------------------------------------------------------------
    def step(self, now: float) -> None:
        """One control tick at time ``now``; publishes state changes and telemetry at the configured rate."""
        self.controller.tick(now)
        self._publish_state_if_changed()
        if self.rate > 0 and now - self._last_telemetry >= 1.0 / self.rate:
            self._last_telemetry = now
            self.link.publish_nowait(self.t_telemetry, dumps({"id": self.id, "ts": time.time(), **self.telemetry()}))

    def telemetry(self) -> dict[str, Any]:
        return self.controller.telemetry()

    def announcement(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "driver": self.driver.name,
            "state": self.controller.state,
            "actions": {name: a.describe() for name, a in sorted(self.controller.actions.items())},
            "limits": self.limits.to_dict(),
            "telemetry_rate": self.rate,
            "ts": time.time(),
        }

    def _publish_state_if_changed(self, force: bool = False) -> None:
        state = self.controller.state
        if force or state != self._last_state:
            self._last_state = state
            self.link.publish_nowait(self.t_state, dumps(self.announcement()), 1, True)

    def _on_connect(self) -> None:
        self.link.publish_nowait(self.t_status, dumps({"id": self.id, "state": "online"}), 1, True)
        self._publish_state_if_changed(force=True)

    # -- messages ---------------------------------------------------------------------------------------------
    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic in (self.t_estop, self.t_all_estop):
            self.controller.estop(f"e-stop on {topic}")
            self._publish_state_if_changed()
            return
        if topic == self.t_cmd:
            self._on_command(message)

    def _on_command(self, message: aiomqtt.Message) -> None:
        response, correlation = reply_address(message)
        if not response or has_wildcard(response):
            response = self.t_reply
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        cid: str | None = None
        try:
            if message.retain:
                raise CommandError("bad_request", "retained commands are refused: a command must be fresh")
            cmd = parse_command(bytes(payload), self.controller.actions)
            cid = cmd.id
            result = self.controller.command(cmd, self.clock())
            reply: dict[str, Any] = {"id": cid, "ok": True, "action": cmd.action, "result": result}
        except CommandError as exc:
            self.rejected += 1
            log.warning("robot %s refused a command: %s", self.id, exc.message)
            reply = {"id": exc.command_id or cid, "ok": False, "error": exc.to_body()}
        self._publish_state_if_changed()
        self.link.publish_nowait(response, dumps(reply), 1, False, publish_properties(correlation))
