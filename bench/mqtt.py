"""MQTT delivery through the daemon's bridge, as ratios to a direct aiomqtt publish→subscribe on the same broker.

Starts its own mosquitto on a free loopback port (``/usr/sbin/mosquitto``, config in a temp dir) and measures,
in one run, for QoS 0 and QoS 1:

- latency: one message at a time, from the sender's call to an aiomqtt subscriber in the same process having it.
  "bridge" = ``Hub.publish`` of an event → ``MqttBridge`` → broker → subscriber (the daemon's hub and bridge,
  in process); "direct" = ``aiomqtt.Client.publish`` of a payload of the same size → broker → subscriber.
- sustained rate: N messages sent as fast as each path allows, counted by a ``mosquitto_sub -C N`` process (a C
  subscriber on its own core, so the Python side is only the sender). "direct" keeps 256 publishes in flight
  (aiomqtt awaits each PUBACK, so concurrency is the only way it pipelines); the bridge's sender keeps 256
  unacknowledged too.

    .venv/bin/python bench/mqtt.py [--n 20000] [--latency-n 1000]

Targets (issue 6): bridge p50 within 2× of direct; bridge events/s at least direct's with 256 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiomqtt

from bus.mqtt_bridge import BridgeConfig, MqttBridge
from bus.mqtt_link import MqttSettings
from bus.mqtt_topics import dumps
from daemon.hub import Hub

MOSQUITTO = "/usr/sbin/mosquitto"
NODE = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nlog_type error\n"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("mosquitto did not start")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.01)


def event_payload(t: float) -> bytes:
    """What the bridge sends for one event, so the direct path carries the same number of bytes."""
    env = {
        "v": 1,
        "kind": "event",
        "id": os.urandom(16).hex(),
        "topic": "bench.tick",
        "ts": time.time(),
        "body": {"t": t},
    }
    return dumps(env)


class Receiver:
    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.waiter: asyncio.Future[float] | None = None

    async def run(self) -> None:
        async for _ in self.client.messages:
            now = time.perf_counter()
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(now)

    def expect(self) -> asyncio.Future[float]:
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter


async def latency(port: int, hub: Hub, bridge: MqttBridge, qos: int, n: int) -> dict[str, list[float]]:
    bridge.config.qos_events = qos
    bridge._topic_cache.clear()
    out: dict[str, list[float]] = {"direct": [], "bridge": []}
    async with (
        aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as sub,
        aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as pub,
    ):
        await sub.subscribe(f"lat/{qos}", qos)
        await sub.subscribe(f"enigma/{NODE}/event/lat{qos}/#", qos)
        rx = Receiver(sub)
        task = asyncio.create_task(rx.run())
        try:
            for i in range(n + n // 10):  # the first tenth warms up
                for path in ("direct", "bridge"):
                    fut = rx.expect()
                    t0 = time.perf_counter()
                    if path == "direct":
                        await pub.publish(f"lat/{qos}", event_payload(t0), qos)
                    else:
                        hub.publish(f"lat{qos}.tick", {"t": t0})
                    t1 = await asyncio.wait_for(fut, 10)
                    if i >= n // 10:
                        out[path].append(t1 - t0)
        finally:
            task.cancel()
    return out


async def counted_by_mosquitto_sub(port: int, topic: str, n: int, send: object) -> float:
    """Start ``mosquitto_sub -C n+1`` (one retained ready marker first), run ``send``, time until it has all."""
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish(f"{topic}/ready", b"r", qos=1, retain=True)
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", f"{topic}/#",
        "-C", str(n + 1), "-F", "%t", stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    await proc.stdout.readline()  # the retained marker: the subscription is in place
    t0 = time.perf_counter()
    await send()  # type: ignore[operator]
    await proc.stdout.read()
    await proc.wait()
    elapsed = time.perf_counter() - t0
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish(f"{topic}/ready", b"", qos=1, retain=True)
    return n / elapsed


async def throughput(port: int, hub: Hub, bridge: MqttBridge, qos: int, n: int) -> dict[str, float]:
    bridge.config.qos_events = qos
    bridge._topic_cache.clear()
    payload = event_payload(0.0)

    async def direct() -> None:
        async with aiomqtt.Client(
            "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=256
        ) as pub:
            sem = asyncio.Semaphore(256)

            async def one(i: int) -> None:
                try:
                    await pub.publish(f"tp{qos}/direct/x", payload, qos)
                finally:
                    sem.release()

            tasks = []
            for i in range(n):
                await sem.acquire()
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

    async def via_bridge() -> None:
        for i in range(n):
            hub.publish(f"tp{qos}.bridge", {"i": i})
            if i % 256 == 255:
                await asyncio.sleep(0)  # a producer on the loop yields now and then; the sender runs meanwhile
        await bridge.link.drain(120)

    logging.getLogger("mqtt").setLevel("ERROR")  # aiomqtt warns about >10 pending publishes: by design here
    return {
        "direct": await counted_by_mosquitto_sub(port, f"tp{qos}/direct", n, direct),
        "bridge": await counted_by_mosquitto_sub(port, f"enigma/{NODE}/event/tp{qos}", n, via_bridge),
    }


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p * len(s)))]


async def main_async(args: argparse.Namespace) -> None:
    if shutil.which("mosquitto_sub") is None:
        raise SystemExit("mosquitto_sub is needed (apt install mosquitto-clients)")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_broker(Path(tmp))
        try:
            hub = Hub(replay_per_topic=1)
            conf = BridgeConfig(
                node_id=NODE,
                mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{port}", client_id="bench-bridge", queue_limit=args.n + 1000),
            )
            bridge = MqttBridge(hub, conf)
            await bridge.start(wait=10)
            rows = []
            for qos in (0, 1):
                lat = await latency(port, hub, bridge, qos, args.latency_n)
                tp = await throughput(port, hub, bridge, qos, args.n)
                rows.append((qos, lat, tp))
            await bridge.close()
        finally:
            proc.terminate()
            proc.wait()
    print(
        f"MQTT delivery, mosquitto on loopback; latency over {args.latency_n} messages one at a time, rate over {args.n}"
    )
    print(f"{'qos':>3} {'path':<8} {'p50 µs':>8} {'p99 µs':>8} {'msg/s':>9}")
    for qos, lat, tp in rows:
        for path in ("direct", "bridge"):
            print(
                f"{qos:>3} {path:<8} {pct(lat[path], 0.5) * 1e6:>8.0f} {pct(lat[path], 0.99) * 1e6:>8.0f} {tp[path]:>9.0f}"
            )
        p50 = pct(lat["bridge"], 0.5) / pct(lat["direct"], 0.5)
        p99 = pct(lat["bridge"], 0.99) / pct(lat["direct"], 0.99)
        rate = tp["bridge"] / tp["direct"]
        print(
            f"{qos:>3} {'ratio':<8} {p50:>8.2f} {p99:>8.2f} {rate:>9.2f}   (bridge / direct; target p50 ≤ 2.00, rate ≥ 1.00)"
        )
    print(json.dumps({f"qos{q}": {"p50_ratio": round(pct(lat['bridge'], 0.5) / pct(lat['direct'], 0.5), 3),
                                  "rate_ratio": round(tp["bridge"] / tp["direct"], 3)} for q, lat, tp in rows}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="messages per rate measurement")
    ap.add_argument("--latency-n", type=int, default=1000, help="messages per latency measurement")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
