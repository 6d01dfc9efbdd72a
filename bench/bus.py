"""Bus benchmark: Enigma's ZeroMQ transport against raw pyzmq, measured in one run on this machine.

    .venv/bin/python bench/bus.py [--requests 3000] [--window 32] [--events 8000] [--subscribers 10]

Round trips go to the real ``enigmad`` (``sys.ping``) started as a subprocess when it is installed, else to a
``ZmqServer`` + ``Hub`` subprocess; the baseline is a raw ``zmq.asyncio`` ROUTER that echoes each frame back.
Both are driven by the same raw DEALER code (and the SDK ``Client`` as a second Enigma row). Event fan-out
needs a burst of events published inside the server, so it runs against a ``ZmqServer`` + ``Hub`` subprocess
with a ``bench.burst`` handler; the baseline is a raw PUB publishing pre-encoded frames. Subscribers are plain
SUB sockets drained by one thread in this process, identical for both, counting frames without decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq
import zmq.asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PAD = "x" * 64


# -- servers (each runs in its own subprocess) ---------------------------------------------------------------
async def serve_raw() -> None:
    """ROUTER echo plus a PUB that publishes a pre-encoded burst when asked with b"burst:N"."""
    ctx = zmq.asyncio.Context()
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    pub.sndhwm = 100_000
    rpc = router.bind_to_random_port("tcp://127.0.0.1")
    ev = pub.bind_to_random_port("tcp://127.0.0.1")
    frame = msgpack.packb(
        {"v": 1, "kind": "event", "id": "e1", "body": {"i": 0, "pad": PAD}, "topic": "bench.x", "ts": time.time()}
    )
    print(f"ready rpc=tcp://127.0.0.1:{rpc} events=tcp://127.0.0.1:{ev}", flush=True)
    while True:
        rid, payload = await router.recv_multipart()
        if payload.startswith(b"burst:"):
            for _ in range(int(payload[6:])):
                pub.send_multipart([b"bench.x", frame])
            pub.send_multipart([b"bench.end", frame])
        await router.send_multipart([rid, payload])


async def serve_enigma() -> None:
    """``ZmqServer`` + ``Hub`` with ``sys.ping`` and ``bench.burst`` (publishes N events through the hub)."""
    from bus.service import Call
    from bus.zmq_server import ServerLimits, ZmqServer
    from daemon.hub import Hub

    hub = Hub()

    async def ping(call: Call) -> dict[str, Any]:
        return {"pong": True, "ts": time.time()}

    async def burst(call: Call) -> dict[str, Any]:
        for i in range(call.body["n"]):
            hub.publish("bench.x", {"i": i, "pad": PAD})
        hub.publish("bench.end", {})
        return {}

    hub.register("sys.ping", ping, access="device")
    hub.register("bench.burst", burst)
    server = ZmqServer(
        hub,
        rpc="tcp://127.0.0.1:0",
        events="tcp://127.0.0.1:0",
        node_id="bench",
        boot_id="bench",
        limits=ServerLimits(event_queue=100_000, events_sndhwm=100_000),
    )
    await server.start()
    print(f"ready rpc={server.endpoints['rpc']} events={server.endpoints['events']}", flush=True)
    await asyncio.Event().wait()


class Proc:
    """A server subprocess; waits for its ready line and parses the endpoints from it."""

    def __init__(self, argv: list[str], ready_word: str) -> None:
        # No model: the bus is what is measured (a configured autoload list would still win).
        env = {**os.environ, "ENIGMA_DEFAULT_AUTOLOAD": ""}
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        assert self.p.stdout is not None
        deadline = time.monotonic() + 60
        for line in self.p.stdout:
            if ready_word in line and "rpc=" in line:
                fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                self.rpc, self.events = fields["rpc"], fields["events"]
                break
            if time.monotonic() > deadline:
                break
        else:
            raise SystemExit(f"server {argv} exited before it was ready")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.p.stdout is not None
        for _ in self.p.stdout:
            pass

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


# -- round trips ---------------------------------------------------------------------------------------------
def _request(i: int) -> bytes:
    return msgpack.packb({"v": 1, "kind": "request", "id": f"b{i:x}", "method": "sys.ping", "body": {}})


async def raw_sequential(endpoint: str, n: int) -> list[float]:
    ctx = zmq.asyncio.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    await s.send(_request(0))
    await s.recv()  # connected and warm
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        await s.send(_request(i))
        await s.recv()
        lat.append(time.perf_counter() - t0)
    s.close(linger=0)
    ctx.term()
    return lat


async def raw_pipelined(endpoint: str, n: int, window: int) -> float:
    ctx = zmq.asyncio.Context()
    s = ctx.socket(zmq.DEALER)
    s.connect(endpoint)
    await s.send(_request(0))
    await s.recv()
    t0 = time.perf_counter()
    sent = recvd = 0
    while sent < min(window, n):
        await s.send(_request(sent))
        sent += 1
    while recvd < n:
        await s.recv()
        recvd += 1
        if sent < n:
            await s.send(_request(sent))
            sent += 1
    dt = time.perf_counter() - t0
    s.close(linger=0)
    ctx.term()
    return n / dt


async def sdk_sequential(rpc: str, n: int) -> list[float]:
    from clients.sdk import Client

    async with Client(rpc, rpc, timeout=10) as c:
        await c.call("sys.ping")
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await c.call("sys.ping")
            lat.append(time.perf_counter() - t0)
    return lat


async def sdk_pipelined(rpc: str, n: int, window: int) -> float:
    from clients.sdk import Client

    async with Client(rpc, rpc, timeout=30) as c:
        await c.call("sys.ping")
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await c.call("sys.ping")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(window)))
        return n / (time.perf_counter() - t0)


def _burst_request(count: int) -> bytes:
    m = {
        "v": 1,
        "kind": "request",
        "id": f"burst{time.perf_counter_ns()}",
        "method": "bench.burst",
        "body": {"n": count},
    }
    return msgpack.packb(m)


# -- fan-out -------------------------------------------------------------------------------------------------
def fanout(server: Proc, trigger: Callable[[int], bytes], n: int, subscribers: int) -> tuple[float, int]:
    """Messages/s delivered to all subscribers (total frames / first-to-last), and how many were lost."""
    ctx = zmq.Context()
    subs = []
    for _ in range(subscribers):
        s = ctx.socket(zmq.SUB)
        s.rcvhwm = 100_000
        s.connect(server.events)
        s.subscribe(b"bench.")
        subs.append(s)
    req = ctx.socket(zmq.DEALER)
    req.connect(server.rpc)
    poller = zmq.Poller()
    for s in subs:
        poller.register(s, zmq.POLLIN)

    def burst(count: int) -> tuple[int, float, float]:
        req.send(trigger(count))
        got, ended, first, last = 0, set(), 0.0, 0.0
        deadline = time.monotonic() + 30
        while len(ended) < len(subs) and time.monotonic() < deadline:
            for sock, _ in poller.poll(200):
                while True:
                    try:
                        topic, _frame = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if not first:
                        first = time.perf_counter()
                    if topic == b"bench.end":
                        ended.add(sock)
                    else:
                        got += 1
                    last = time.perf_counter()
        req.recv()
        return got, first, last

    while burst(1)[0] < subscribers:  # until every subscription has reached the publisher
        pass
    got, first, last = burst(n)
    for s in [*subs, req]:
        s.close(linger=0)
    ctx.term()
    return got / (last - first), n * subscribers - got


# -- report --------------------------------------------------------------------------------------------------
def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100)[int(p) - 1] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--events", type=int, default=8000)
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve", choices=["raw", "enigma"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "raw":
        asyncio.run(serve_raw())
        return
    if args.serve == "enigma":
        asyncio.run(serve_enigma())
        return

    py = sys.executable
    raw = Proc([py, __file__, "--serve", "raw"], "ready")
    own = Proc([py, __file__, "--serve", "enigma"], "ready")
    enigmad_bin = Path(py).parent / "enigmad"
    data_dir = tempfile.mkdtemp(prefix="enigma-bench-")
    daemon: Proc | None = None
    try:
        if enigmad_bin.exists():
            argv = [str(enigmad_bin), "--rpc", "tcp://127.0.0.1:0", "--events", "tcp://127.0.0.1:0"]
            daemon = Proc([*argv, "--data-dir", data_dir, "--log-level", "warning"], "enigmad ready")
        target, target_name = (daemon, "enigmad") if daemon else (own, "ZmqServer+Hub")
        n, w = args.requests, args.window

        k = args.subscribers
        # Rounds interleave every path so a burst of load from elsewhere on the machine hits all of them;
        # each figure is the median over the rounds.
        m: dict[str, list[float]] = {}

        def note(key: str, value: float) -> None:
            m.setdefault(key, []).append(value)

        for _ in range(args.rounds):
            for key, lat in (
                ("raw", asyncio.run(raw_sequential(raw.rpc, n))),
                ("eng", asyncio.run(raw_sequential(target.rpc, n))),
                ("sdk", asyncio.run(sdk_sequential(target.rpc, n))),
            ):
                note(f"{key}.p50", pct(lat, 50))
                note(f"{key}.p99", pct(lat, 99))
                note(f"{key}.rps", n / sum(lat))
            note("raw.pipe", asyncio.run(raw_pipelined(raw.rpc, n, w)))
            note("eng.pipe", asyncio.run(raw_pipelined(target.rpc, n, w)))
            note("sdk.pipe", asyncio.run(sdk_pipelined(target.rpc, n, w)))
            rate, lost = fanout(raw, lambda c: b"burst:%d" % c, args.events, k)
            note("raw.fan", rate)
            note("raw.lost", lost)
            rate, lost = fanout(own, _burst_request, args.events, k)
            note("own.fan", rate)
            note("own.lost", lost)
        med = {key: statistics.median(v) for key, v in m.items()}

        rows: list[tuple[str, str, float, float]] = []
        for label, key in (
            ("round trip p50 (µs)", "p50"),
            ("round trip p99 (µs)", "p99"),
            ("sequential req/s", "rps"),
            (f"pipelined req/s (window {w})", "pipe"),
        ):
            base = med[f"raw.{key}"]
            rows.append((label, "raw DEALER → raw ROUTER echo", base, 1.0))
            rows.append(("", f"raw DEALER → {target_name} sys.ping", med[f"eng.{key}"], med[f"eng.{key}"] / base))
            rows.append(("", f"SDK Client → {target_name} sys.ping", med[f"sdk.{key}"], med[f"sdk.{key}"] / base))
        base = med["raw.fan"]
        rows.append((f"event fan-out msgs/s ({k} subs)", f"raw PUB (lost {med['raw.lost']:.0f})", base, 1.0))
        rows.append(("", f"ZmqServer+Hub XPUB (lost {med['own.lost']:.0f})", med["own.fan"], med["own.fan"] / base))
    finally:
        for p in (daemon, own, raw):
            if p is not None:
                p.stop()
        shutil.rmtree(data_dir, ignore_errors=True)

    print(
        f"bus benchmark: {n} requests, window {w}, {args.events} events x {k} subscribers, "
        f"median of {args.rounds} interleaved rounds, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'measure':32} {'path':44} {'value':>12} {'ratio':>7}")
    print("-" * 98)
    for measure, path, value, ratio in rows:
        print(f"{measure:32} {path:44} {value:12,.0f} {ratio:7.2f}")
    print("ratio: against the raw baseline of the same measure (latency: lower is better; rates: higher is better)")


if __name__ == "__main__":
    main()
