"""``enigma robots list|send|watch``: the robots the daemon's ``robots`` module sees on the MQTT broker.

``send`` goes through ``robot.command`` and prints the robot's answer; a refusal (out-of-range speed, e-stop
engaged, …) is the robot's own error code and message, so a script can tell why. ``send ID estop`` (or
``send all estop``) goes to the e-stop topic. ``watch`` prints ``robot.state`` changes and, with
``--telemetry``, every telemetry message.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("robots", parents=[common], help="list, command and watch robots (robots module)")
    group.set_defaults(run=list_robots)
    verbs = group.add_subparsers(dest="verb", metavar="VERB", title="verbs", parser_class=type(group))
    p = verbs.add_parser("list", parents=[common], help="every robot seen on the broker (default)")
    p.set_defaults(run=list_robots)
    p = verbs.add_parser(
        "send",
        parents=[common],
        help="send a robot one command and print its answer",
        description="Send ACTION to robot ID with KEY=VALUE parameters (a VALUE that parses as JSON keeps its "
        "type). Examples: 'send r1 move speed=0.3 distance=1', 'send r1 stop', 'send all estop'.",
    )
    p.add_argument("id", help="robot id ('all' with estop)")
    p.add_argument("action", help="move, turn, drive, stop, home, gripper, speed, reset, estop or a custom action")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="parameters")
    p.set_defaults(run=send)
    p = verbs.add_parser("watch", parents=[common], help="print robot state changes as they happen (Ctrl-C to stop)")
    p.add_argument("id", nargs="?", help="only this robot")
    p.add_argument("--telemetry", action="store_true", help="also print telemetry")
    p.set_defaults(run=watch)


def _pose(pose: Any) -> str:
    if not isinstance(pose, dict):
        return "-"
    return f"({pose.get('x', 0):.2f}, {pose.get('y', 0):.2f}, {pose.get('heading', 0):.2f})"


def _battery(value: Any) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, int | float) else "-"


async def list_robots(ctx: Context) -> Output:
    from clients.cli.render import Column, Table

    async with ctx.client() as c:
        body = await c.call("robot.list", {}, timeout=ctx.timeout)
    robots = list(body.get("robots", []))
    columns = [
        Column("id", "ID"),
        Column("online", "ONLINE", fmt=lambda v: "yes" if v else "no"),
        Column("state", "STATE", state=True),
        Column("driver", "DRIVER", fmt=lambda v: v or "-"),
        Column("battery", "BATTERY", fmt=_battery),
        Column("pose", "POSE (x, y, heading)", fmt=_pose),
    ]
    return Table(columns, robots, data={"robots": robots}, empty="(no robots have announced themselves)")


async def send(ctx: Context) -> Output:
    from clients.cli.events import parse_body
    from clients.cli.render import Text, plain

    params = parse_body(ctx.args.pairs, None)
    body = {"id": ctx.args.id, "action": ctx.args.action, "params": params}
    async with ctx.client() as c:
        reply = await c.call("robot.command", body, timeout=ctx.timeout)
    result = reply.get("result") or {}
    if "sent" in reply:
        return Text(f"e-stop sent to {reply['sent']}", reply)
    detail = f": {plain(result)}" if result else ""
    return Text(f"{ctx.args.id} accepted {ctx.args.action}{detail}", reply)


async def watch(ctx: Context) -> None:
    from bus.topics import ROBOT, ROBOT_STATE, SYS_HEARTBEAT
    from clients.cli.events import _wait_subscribed
    from clients.cli.render import clock, plain

    prefix = ROBOT if ctx.args.telemetry else ROBOT_STATE
    r = ctx.render
    async with ctx.client() as c, c.subscribe(prefix) as events, c.subscribe(SYS_HEARTBEAT) as beats:
        await _wait_subscribed(ctx, beats)  # a heartbeat on our socket: the robot subscription is live too
        if ctx.verbose or (not r.json_mode and r.err.isatty()):
            r.note(f"enigma: watching {'robots' if not ctx.args.id else ctx.args.id} (Ctrl-C to stop)")
        async for ev in events:
            body = ev.body if isinstance(ev.body, dict) else {}
            if ctx.args.id and body.get("id") != ctx.args.id:
                continue
            if ev.topic == ROBOT_STATE:
                state = str(body.get("state"))
                online = "online" if body.get("online") else "offline"
                human = f"{clock(ev.ts)}  {r.bold(str(body.get('id')))} {online} {r.paint(state, state)}"
            else:
                pose, battery = _pose(body.get("pose")), _battery(body.get("battery"))
                human = f"{clock(ev.ts)}  {body.get('id')} pose={pose} battery={battery} {plain(body.get('wheels'))}"
            r.item({"topic": ev.topic, "ts": ev.ts, "body": body}, human)
