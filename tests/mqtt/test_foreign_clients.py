"""Clients we did not write (mosquitto_rr, mosquitto_pub, mosquitto_sub) call methods and see the last will."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bus.mqtt_bridge import MqttBridge
from tests.mqtt.broker import Mosquitto
from tests.mqtt.conftest import NODE
from tests.mqtt.helpers import collector

REQ = f"enigma/{NODE}/rpc/request"
ROOT = Path(__file__).resolve().parents[2]


async def run(*argv: str, within: float = 15.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(shutil.which("mosquitto_rr") is None, reason="mosquitto_rr is not installed")
async def test_mosquitto_rr_calls_sys_status(broker: Mosquitto, bridge: MqttBridge) -> None:
    rc, out, err = await run(
        "mosquitto_rr", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-W", "10",
        "-t", REQ, "-e", "rr/answer", "-m", json.dumps({"method": "sys.status", "id": "rr1"}),
    )  # fmt: skip
    assert rc == 0, err
    env = json.loads(out)
    assert env["kind"] == "reply"
    assert env["ref"] == "rr1"
    assert env["body"]["node_id"] == NODE


async def test_mosquitto_pub_and_sub_call_a_streaming_method(broker: Mosquitto, bridge: MqttBridge) -> None:
    # a retained probe: mosquitto_sub prints it as soon as its subscription is in place
    async with collector(broker) as probe:
        await probe.client.publish("cli/answers", b'{"kind":"probe"}', qos=1, retain=True)
    sub = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1",
        "-t", "cli/answers", "-C", "5", "-W", "15", "-F", "%D|%p",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert sub.stdout is not None
    first = await asyncio.wait_for(sub.stdout.readline(), 15)
    rc, _, err = await run(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t", REQ,
        "-D", "publish", "response-topic", "cli/answers", "-D", "publish", "correlation-data", "abc",
        "-m", json.dumps({"method": "test.count", "body": {"n": 3}, "id": "p1"}),
    )  # fmt: skip
    assert rc == 0, err
    out, err_b = await asyncio.wait_for(sub.communicate(), 20)
    assert sub.returncode == 0, err_b.decode()
    lines = [first.decode().rstrip("\n"), *out.decode().splitlines()]
    envs = [json.loads(line.split("|", 1)[1]) for line in lines]
    assert envs[0]["kind"] == "probe"
    assert [(e["kind"], e.get("seq")) for e in envs[1:]] == [("chunk", 0), ("chunk", 1), ("chunk", 2), ("end", None)]
    assert envs[-1]["body"] == {"count": 3}
    assert all(line.startswith("abc|") for line in lines[1:])


async def test_last_will_marks_node_offline_when_daemon_dies(broker: Mosquitto) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.mqtt.bridge_proc", broker.url, cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert line == b"ready\n"
        async with collector(broker, f"enigma/{NODE}/status") as c:
            await c.wait_for(lambda: bool(c.messages))
            assert json.loads(c.messages[0].payload)["state"] == "online"
            proc.kill()
            await proc.wait()
            await c.wait_for(lambda: len(c.messages) == 2, what="the last will")
        assert json.loads(c.messages[1].payload)["state"] == "offline"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
