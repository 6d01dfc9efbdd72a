"""End to end through a real ``enigmad`` subprocess with the ``mqtt`` and ``robots`` modules loaded: one daemon and
broker serve the module's tests (each finds ``echo`` active; the robot test's robot has an id of its own)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from bus.mqtt_link import MqttSettings
from clients.robot.commands import Limits
from clients.robot.drivers.sim import SimDriver
from clients.robot.node import RobotNode
from clients.sdk import Client, SyncClient
from tests.conftest import SERVING_NODE, DaemonLauncher, DaemonProcess
from tests.mqtt.broker import Mosquitto
from tests.mqtt.helpers import call, collector
from tests.mqtt.test_foreign_clients import run

NODE = "e2e"
REQ = f"enigma/{NODE}/rpc/request"


def config(broker: Mosquitto) -> str:
    return f"""
[modules]
autoload = ["echo", "mqtt", "robots"]

[modules.mqtt]
broker = "{broker.url}"
node_id = "{NODE}"
roles = {{ ops = "admin" }}

[modules.robots]
broker = "{broker.url}"
command_timeout = 5
"""


@pytest.fixture(scope="module")
def e2e_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path_factory.mktemp("e2e-broker"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def e2e_daemon(e2e_broker: Mosquitto, module_launcher: DaemonLauncher) -> DaemonProcess:
    """One daemon with ``echo``, ``mqtt`` and ``robots`` for the module, online on its broker."""

    async def start() -> DaemonProcess:
        async with collector(e2e_broker, f"enigma/{NODE}/status") as c:
            d = await asyncio.to_thread(module_launcher.start, config=config(e2e_broker))
            await c.wait_for(lambda: any(json.loads(m.payload)["state"] == "online" for m in c.messages), 30)
        return d

    return asyncio.run(start())


@pytest.fixture
def broker(e2e_broker: Mosquitto) -> Mosquitto:
    return e2e_broker


@pytest.fixture
def enigmad(e2e_daemon: DaemonProcess) -> DaemonProcess:
    """The module's daemon with ``echo`` active, as its start leaves it (a test unloads it over MQTT)."""
    client = SyncClient(e2e_daemon.rpc, e2e_daemon.events, timeout=10.0)
    try:
        client.call("module.load", {"name": "echo"})
    finally:
        client.close()
    return e2e_daemon


@pytest.mark.skipif(shutil.which("mosquitto_rr") is None, reason="mosquitto_rr is not installed")
async def test_mosquitto_rr_calls_sys_status_of_a_real_daemon(broker: Mosquitto, enigmad: Any) -> None:
    rc, out, err = await run(
        "mosquitto_rr", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-W", "10",
        "-t", REQ, "-e", "rr/e2e", "-m", '{"method": "sys.status", "id": "s1"}',
    )  # fmt: skip
    assert rc == 0, err
    env = json.loads(out)
    assert (env["kind"], env["ref"]) == ("reply", "s1")
    assert env["body"]["caller"] == {"role": "device", "transport": "mqtt"}
    assert {"name": "mqtt", "state": "active"} in env["body"]["modules"]


async def test_echo_count_streams_through_the_daemon(broker: Mosquitto, enigmad: Any) -> None:
    envs, _ = await call(broker, REQ, {"method": "echo.count", "body": {"n": 20}, "id": "c1"})
    assert [e["kind"] for e in envs] == ["chunk"] * 20 + ["end"]
    assert [e["body"]["i"] for e in envs[:-1]] == list(range(20))
    assert envs[-1]["body"] == {"count": 20}


async def test_module_events_reach_mqtt_and_roles_apply(broker: Mosquitto, enigmad: Any) -> None:
    denied, _ = await call(broker, REQ, {"method": "module.unload", "body": {"name": "echo"}})
    assert denied[0]["body"]["code"] == "forbidden"
    async with collector(broker, f"enigma/{NODE}/event/module/state") as c:
        done, _ = await call(broker, REQ + "/ops", {"method": "module.unload", "body": {"name": "echo"}})
        assert done[-1]["kind"] == "reply"
        await c.wait_for(lambda: any(json.loads(m.payload)["body"]["state"] == "unloaded" for m in c.messages))
    states = [(e["body"]["name"], e["body"]["state"]) for e in c.json_on(f"enigma/{NODE}/event/module/state")]
    assert states == [("echo", "unloading"), ("echo", "unloaded")]


async def test_daemon_lists_and_commands_a_sim_robot(broker: Mosquitto, enigmad: Any) -> None:
    robot = RobotNode("bot7", SimDriver(), MqttSettings(url=broker.url), limits=Limits(), rate=10)
    try:
        # Subscribed before the robot starts: the state events are not retained, and the daemon may see the
        # announcement and publish them before a later subscription is in place.
        async with collector(broker, f"enigma/{NODE}/event/robot/state") as c:
            await robot.start(wait=10)
            # status and announcement arrive separately: wait for the event that has both
            await c.wait_for(
                lambda: any(
                    e["body"]["online"] and e["body"]["driver"] == "sim"
                    for e in c.json_on(f"enigma/{NODE}/event/robot/state")
                ),
                15,
                what="robot.state event with the announcement",
            )
        listed, _ = await call(broker, REQ, {"method": "robot.list"})
        assert [(r["id"], r["online"], r["driver"]) for r in listed[0]["body"]["robots"]] == [("bot7", True, "sim")]
        cmd = {"id": "bot7", "action": "move", "params": {"speed": 0.3, "distance": 0.2}}
        moved, _ = await call(broker, REQ + "/ops", {"method": "robot.command", "body": cmd})
        assert moved[0]["body"] == {"id": "bot7", "action": "move", "result": {}}
        bad = {"id": "bot7", "action": "move", "params": {"speed": 9, "distance": 1}}
        refused, _ = await call(broker, REQ + "/ops", {"method": "robot.command", "body": bad})
        assert refused[0]["body"] == {"code": "bad_request", "message": "move.speed=9 is out of range [-0.5, 0.5]"}
        missing, _ = await call(broker, REQ + "/ops", {"method": "robot.state", "body": {"id": "nobody"}})
        assert missing[0]["body"] == {
            "code": "not_found",
            "message": "no robot 'nobody' has announced itself (known: bot7)",
        }
    finally:
        await robot.close()


FRANCE = {"text": "What is the capital of France?", "temperature": 0, "max_tokens": 24}


@pytest.mark.model
@pytest.mark.slow
async def test_mosquitto_clients_chat_with_the_real_model(
    session_broker: Mosquitto, serving_daemon: DaemonProcess
) -> None:
    """chat.send through rpc/request/<username> with mosquitto_pub/mosquitto_sub: chunks of text, then end; the
    stored answer also appears as a chat.message event on MQTT (what the overlay and Home Assistant show). The
    session's model daemon serves it: its ``mqtt`` module, set up for ``session_broker``, is loaded for this test."""
    broker, node = session_broker, SERVING_NODE
    req = f"enigma/{node}/rpc/request"
    async with (
        collector(broker, f"enigma/{node}/status", f"enigma/{node}/event/chat/message") as c,
        Client(serving_daemon.rpc, serving_daemon.events, timeout=60.0) as admin,
    ):
        await admin.call("module.load", {"name": "mqtt"})
        try:
            await c.wait_for(
                lambda: any(json.loads(m.payload)["state"] == "online" for m in c.on(f"enigma/{node}/status")), 60
            )
            sub = await asyncio.create_subprocess_exec(
                "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
                "-t", "chat/answers", "-W", "120", stdout=subprocess.PIPE,
            )  # fmt: skip
            try:
                assert sub.stdout is not None
                # mosquitto_sub's subscription is in place once a retained probe comes back through it
                await c.client.publish("chat/answers", b'{"kind":"probe"}', qos=1, retain=True)
                assert json.loads(await asyncio.wait_for(sub.stdout.readline(), 15))["kind"] == "probe"
                rc, _, err = await run(
                    "mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
                    "-t", req + "/ops", "-D", "publish", "response-topic", "chat/answers",
                    "-m", json.dumps({"method": "chat.send", "id": "q1", "body": FRANCE}),
                )  # fmt: skip
                assert rc == 0, err
                envs = []
                while not envs or envs[-1]["kind"] == "chunk":
                    envs.append(json.loads(await asyncio.wait_for(sub.stdout.readline(), 120)))
            finally:
                sub.terminate()
                await sub.wait()
            assert envs[-1]["kind"] == "end", envs[-1]
            text = "".join(e["body"]["text"] for e in envs[:-1])
            assert "Paris" in text
            await c.wait_for(
                lambda: any(e["body"]["role"] == "assistant" for e in c.json_on(f"enigma/{node}/event/chat/message")),
                30,
            )
        finally:  # the daemon is shared: leave it as it was
            await admin.call("module.unload", {"name": "mqtt"})
    answer = [e["body"] for e in c.json_on(f"enigma/{node}/event/chat/message") if e["body"]["role"] == "assistant"]
    assert "Paris" in answer[-1]["text"]
