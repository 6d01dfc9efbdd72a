"""``python -m clients.overlay``: the game overlay window (Kivy) or, with ``--headless``, lines in the terminal.

python -m clients.overlay --broker mqtt://pi.lan --node kitchen [--detector window|process|static]
                          [--title "Minecraft 1.21"] [--games rules.json] [--headless] [--no-detect]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from bus.errors import BusError
from bus.mqtt_client import MqttCaller
from bus.mqtt_link import MqttSettings
from bus.topics import CHAT_MESSAGE, VOICE
from clients.overlay.detect import DEFAULT_RULES, GameDetector, load_rules, make_source
from clients.overlay.model import Line, OverlayModel, render_line
from clients.overlay.publisher import GAME_STATE, GamePublisher

EVENTS = (CHAT_MESSAGE, VOICE, GAME_STATE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="enigma-overlay", description="Show the assistant over your game.")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://[user:pass@]host[:port] or mqtts://…")
    p.add_argument("--node", required=True, help="the daemon's MQTT node id (enigma/<node>/…)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--ca-file")
    p.add_argument("--headless", action="store_true", help="print to the terminal instead of opening a window")
    p.add_argument("--json", action="store_true", help="headless: print JSON lines")
    p.add_argument("--detector", default="process", choices=["window", "process", "static"], help="game detector")
    p.add_argument("--title", action="append", default=[], help="with --detector static: a window title (repeat)")
    p.add_argument("--games", help="JSON file of game rules [{id, name, pattern, persona?}]")
    p.add_argument("--no-detect", action="store_true", help="do not publish game.state")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between game checks (default: 2)")
    p.add_argument("--max-lines", type=int, default=5)
    p.add_argument("--ttl", type=float, default=30.0, help="seconds a line stays visible (default: 30)")
    p.add_argument("--screenshot", metavar="PNG", help="window: save the first frame showing a line, then exit")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def _printer(as_json: bool) -> Any:
    def show(line: Line) -> None:
        if as_json:
            print(json.dumps({"kind": line.kind, "text": line.text, "ts": line.ts}), flush=True)
        else:
            print(render_line(line), flush=True)

    return show


async def run(args: argparse.Namespace) -> int:
    model = OverlayModel(max_lines=args.max_lines, ttl=args.ttl)
    show = _printer(args.json) if args.headless else None

    def on_event(topic: str, body: dict[str, Any], ts: float | None) -> None:
        line = model.on_event(topic, body, ts)
        if line is not None and show is not None:
            show(line)

    settings = MqttSettings(url=args.broker, username=args.username, password=args.password, ca_file=args.ca_file)
    caller = MqttCaller(settings, args.node, event_prefixes=EVENTS, on_event=on_event)
    try:
        rules = load_rules(args.games) if args.games else DEFAULT_RULES
        source = make_source(args.detector, args.title)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"enigma-overlay: {exc}", file=sys.stderr)
        return 2
    try:
        await caller.start(wait=10)
    except BusError as exc:
        print(f"enigma-overlay: {exc.message}", file=sys.stderr)
        return 3
    tasks: list[asyncio.Task[Any]] = []
    if not args.no_detect:

        async def publish(topic: str, body: dict[str, Any]) -> Any:
            return await caller.call("bus.publish", {"topic": topic, "body": body})

        tasks.append(asyncio.create_task(GamePublisher(source, GameDetector(rules), publish, args.interval).run()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"enigma-overlay listening on {args.broker} for node {args.node}", file=sys.stderr, flush=True)
    try:
        if args.headless:
            await stop.wait()
        else:
            from clients.overlay.window import run_window

            shot = await run_window(model, stop, screenshot=args.screenshot)
            if shot:
                print(f"screenshot {shot}", flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await caller.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
