"""``python -m clients.robot --id r1 --driver sim``: run one robot against a broker until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from bus.errors import BusError
from bus.mqtt_link import MqttSettings
from clients.robot.commands import Limits
from clients.robot.drivers import DriverError, load_driver
from clients.robot.node import RobotNode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="enigma-robot", description="Run a robot client on an MQTT broker.")
    p.add_argument("--id", required=True, help="robot id, used in its topics enigma/robot/<id>/…")
    p.add_argument("--driver", default="sim", help="sim, serial or gpio (default: sim)")
    p.add_argument("--driver-options", default="{}", help='driver options as JSON, e.g. \'{"port": "/dev/ttyACM0"}\'')
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://[user:pass@]host[:port] or mqtts://…")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--ca-file")
    p.add_argument("--cert-file")
    p.add_argument("--key-file")
    p.add_argument("--rate", type=float, default=5.0, help="telemetry messages per second (default: 5)")
    p.add_argument("--max-speed", type=float, default=0.5, help="m/s (default: 0.5)")
    p.add_argument("--max-accel", type=float, default=1.0, help="m/s² (default: 1.0)")
    p.add_argument("--max-turn-rate", type=float, default=2.0, help="rad/s (default: 2.0)")
    p.add_argument("--deadman", type=float, default=0.5, help="seconds before open-ended motion stops (0.5)")
    p.add_argument("--tick", type=float, default=0.02, help="control period in seconds (default: 0.02)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    try:
        options = json.loads(args.driver_options)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"enigma-robot: --driver-options must be a JSON object: {exc}", file=sys.stderr)
        return 2
    try:
        driver = load_driver(args.driver, options)
    except (DriverError, TypeError) as exc:
        print(f"enigma-robot: cannot start driver {args.driver!r}: {exc}", file=sys.stderr)
        return 2
    limits = Limits(
        max_speed=args.max_speed,
        max_turn_rate=args.max_turn_rate,
        max_accel=args.max_accel,
        deadman=args.deadman,
        tick=args.tick,
    )
    settings = MqttSettings(
        url=args.broker,
        username=args.username,
        password=args.password,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
    )
    node = RobotNode(args.id, driver, settings, limits=limits, rate=args.rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
    except BusError as exc:
        print(f"enigma-robot: {exc.message}", file=sys.stderr)
        return 2
    print(f"enigma-robot {args.id} running driver={args.driver} broker={args.broker}", flush=True)
    try:
        await stop.wait()
    finally:
        await node.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
