"""``enigma events [PREFIX]`` and ``enigma publish TOPIC``: tail the daemon's events, and add to them.

A SUB subscription becomes live some time after it is sent, and nothing says when, except an event that
arrives through it: the tail waits for a heartbeat on its own socket before it tells the user it is listening.
With ``--replay N`` the recent past is printed first; a second replay after the subscription is live fills
the gap in between, and the events that then arrive both ways are dropped from the head of the live stream
(live events come in the hub's order, so duplicates of the replay can only be its first ones). Heartbeats are
hidden unless asked for by prefix: a tail that scrolls every two seconds hides what a person is waiting for.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from bus.topics import SYS_HEARTBEAT
from clients.cli.exits import Unreachable

if TYPE_CHECKING:
    from clients.cli.context import Context


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "events",
        parents=[common],
        help="print events as they happen (Ctrl-C to stop)",
        description="Print the daemon's events as they happen. PREFIX filters by topic: 'module.' gets every "
        "module event, 'module.state' just that topic. Without PREFIX, every event except heartbeats.",
    )
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="topic prefix, e.g. module.")
    p.add_argument("--replay", type=_count, default=0, metavar="N", help="first print the last N events kept")
    p.add_argument("--count", type=_count, default=None, metavar="N", help="stop after N events (replay included)")
    p.set_defaults(run=tail)
    p = sub.add_parser(
        "publish",
        parents=[common],
        help="publish an event (through bus.publish, so your role applies)",
        description="Publish an event to every subscriber. The body is built from KEY=VALUE pairs (a VALUE that "
        "parses as JSON keeps its type: n=3 is a number, ok=true a boolean) or given whole with --body.",
    )
    p.add_argument("topic", help="dotted topic, e.g. home.door (sys. and module. belong to the daemon)")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="body fields")
    p.add_argument("--body", metavar="JSON", help="the whole body as a JSON object")
    p.set_defaults(run=publish)


def parse_body(pairs: list[str], body_json: str | None) -> dict[str, Any]:
    """The event body from ``--body`` and ``KEY=VALUE`` pairs (pairs win); a malformed one is a usage error."""
    import json

    from clients.cli.exits import UsageError

    body: dict[str, Any] = {}
    if body_json is not None:
        try:
            loaded = json.loads(body_json)
        except ValueError as exc:
            raise UsageError(f"--body is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--body must be a JSON object, got {type(loaded).__name__}")
        body.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        try:
            body[key] = json.loads(value)
        except ValueError:
            body[key] = value
    return body


async def publish(ctx: Context) -> Any:
    from clients.cli.render import Text

    body = parse_body(ctx.args.pairs, ctx.args.body)
    async with ctx.client() as c:
        reply = await c.call("bus.publish", {"topic": ctx.args.topic, "body": body}, timeout=ctx.timeout)
    return Text(f"published {reply.get('topic', ctx.args.topic)}", dict(reply, body=body))


def _key(topic: str, body: Any) -> str:
    import json

    return topic + "\0" + json.dumps(body, sort_keys=True, default=str)


async def tail(ctx: Context) -> None:
    prefix: str = ctx.args.prefix
    limit: int | None = ctx.args.count
    if limit == 0:
        return
    show_heartbeats = bool(prefix) and SYS_HEARTBEAT.startswith(prefix)  # asked for by name
    printer = _Printer(ctx, limit, show_heartbeats)
    async with ctx.client() as c, c.subscribe(prefix) as live, c.subscribe(SYS_HEARTBEAT) as beats:
        # Fast path: when the replay alone satisfies --count, there is no need to wait for the subscription.
        if ctx.args.replay and await _replay(ctx, c, printer, ctx.args.replay):
            return
        await _wait_subscribed(ctx, beats)
        # Events published after the first replay but before the subscription was live are only in a second one.
        if ctx.args.replay and await _replay(ctx, c, printer, REPLAY_MAX, newer_than=printer.last_ts):
            return
        if ctx.verbose or (not ctx.render.json_mode and ctx.render.err.isatty()):
            what = f"{prefix}*" if prefix else "all events"
            ctx.render.note(f"enigma: listening for {what} on {ctx.events} (Ctrl-C to stop)")
        async for ev in live:
            if printer.live(ev.topic, ev.body, ev.ts):
                return


REPLAY_MAX = 1000  # the daemon's cap on event.replay's limit


async def _wait_subscribed(ctx: Context, beats: Any) -> None:
    """Wait for a heartbeat on our own SUB socket: filters are applied in order, so every earlier one is live."""
    import asyncio

    try:
        async with asyncio.timeout(ctx.timeout):  # the default (10 s) covers several heartbeat intervals
            await anext(beats)
    except TimeoutError:
        raise Unreachable(
            f"no events from {ctx.events} (not even heartbeats) — is --events the daemon's event endpoint?"
        ) from None


async def _replay(ctx: Context, c: Any, printer: _Printer, n: int, newer_than: float | None = None) -> bool:
    """Print the kept events (only those after ``newer_than``); True once --count is reached."""
    body = await c.call("event.replay", {"prefix": ctx.args.prefix, "limit": n}, timeout=ctx.timeout)
    events = body.get("events", [])
    if newer_than is None:
        events = events[-ctx.args.replay :]
    else:
        events = [e for e in events if isinstance(e.get("ts"), int | float) and e["ts"] > newer_than]
    return any(printer.replayed(str(e.get("topic", "")), e.get("body") or {}, e.get("ts")) for e in events)


class _Printer:
    """Counts what was printed against --count and drops live duplicates of replayed events."""

    def __init__(self, ctx: Context, limit: int | None, show_heartbeats: bool) -> None:
        self.ctx = ctx
        self.limit = limit
        self.show_heartbeats = show_heartbeats
        self.shown = 0
        self.last_ts: float | None = None
        # Replayed events that may also arrive live. Live events come in the hub's order, so duplicates can
        # only be the first ones; the first live event that is not one of these ends the check.
        self.pending: list[str] = []

    def replayed(self, topic: str, body: Any, ts: Any) -> bool:
        if isinstance(ts, int | float):
            self.last_ts = float(ts)
        self.pending.append(_key(topic, body))
        return self._show(topic, body, ts, replayed=True)

    def live(self, topic: str, body: Any, ts: Any) -> bool:
        if self.pending:
            key = _key(topic, body)
            if key in self.pending:
                self.pending.remove(key)
                return False
            self.pending.clear()
        return self._show(topic, body, ts, replayed=False)

    def _show(self, topic: str, body: Any, ts: Any, *, replayed: bool) -> bool:
        if topic == SYS_HEARTBEAT and not self.show_heartbeats:
            return False
        _print(self.ctx, topic, body, ts, replayed=replayed)
        self.shown += 1
        return self.limit is not None and self.shown >= self.limit


def _print(ctx: Context, topic: str, body: Any, ts: Any, *, replayed: bool) -> None:
    from clients.cli.render import clock, plain

    data: dict[str, Any] = {"topic": topic, "ts": ts, "body": body}
    if replayed:
        data["replayed"] = True
    r = ctx.render
    state = body.get("state") if isinstance(body, dict) else None
    text = plain(body) if body else ""
    if state is not None:
        text = text.replace(f"state={state}", f"state={r.paint(str(state), state)}", 1)
    mark = "~" if replayed else " "
    r.item(data, f"{clock(ts)}{mark} {r.bold(topic)}  {text}".rstrip())
