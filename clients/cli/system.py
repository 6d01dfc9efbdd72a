"""``enigma status``, ``enigma ping`` and ``enigma methods``: is the daemon there, and what is it doing."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="show the daemon, its server and its modules")
    p.set_defaults(run=status)
    p = sub.add_parser("ping", parents=[common], help="check that enigmad answers, and how fast")
    p.set_defaults(run=ping)
    p = sub.add_parser("methods", parents=[common], help="list the methods the daemon serves right now")
    p.add_argument("prefix", nargs="?", default="", help="only methods starting with this (e.g. module.)")
    p.set_defaults(run=methods)
    p = sub.add_parser(
        "call",
        parents=[common],
        help="call any method and print its answer (a stream's chunks as they come)",
        description="Call METHOD with a body built from KEY=VALUE pairs (a VALUE that parses as JSON keeps its "
        "type) or --body JSON, and print the reply. With --stream, print each chunk on its own line, then the "
        "result. The way to reach a method no command covers yet, and to debug one.",
    )
    p.add_argument("method", help="dotted method name, e.g. echo.say (see: enigma methods)")
    p.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="body fields")
    p.add_argument("--body", metavar="JSON", help="the whole body as a JSON object")
    p.add_argument("--stream", action="store_true", help="the method streams: print chunks, then the result")
    p.set_defaults(run=call)


async def ping(ctx: Context) -> Output:
    import time

    from clients.cli.render import Text

    async with ctx.client() as c:
        start = time.perf_counter()
        body = await c.call("sys.ping", {}, timeout=ctx.timeout)
        rtt = time.perf_counter() - start
    boot = str(body.get("boot_id", ""))[:8] or "?"
    data = dict(body, rtt_ms=round(rtt * 1000, 3), rpc=ctx.rpc)
    return Text(f"pong from enigmad at {ctx.rpc} (boot {boot}) in {rtt * 1000:.1f} ms", data)


# Keys of sys.status shown first, in this order, with their labels; any others follow alphabetically, so a daemon
# that reports more than this CLI knows about is still shown in full.
_STATUS_ORDER = {
    "node_id": "node",
    "version": "version",
    "boot_id": "boot",
    "pid": "pid",
    "started": "started",
    "uptime": "uptime",
    "phase": "phase",
    "data_dir": "data dir",
    "clients": "clients",
    "inflight": "in flight",
}


async def status(ctx: Context) -> Output:
    async with ctx.client() as c:
        body = await c.call("sys.status", {}, timeout=ctx.timeout)
    return status_output(body, ctx.rpc)


def status_output(body: dict[str, Any], rpc: str) -> Output:
    """Top-level facts as aligned fields, nested maps as titled blocks, the modules as a NAME/STATE table and,
    while the daemon is still bringing modules up (``phase`` ``loading``), what it is loading and for how long:
    the daemon answers long before its model is ready, and that is what the user wants to know then."""
    from clients.cli.render import Column, Fields, Group, Table, Text, duration, when

    facts: list[tuple[str, Any]] = [("daemon", rpc)]
    blocks: list[Table | Fields | Text] = []
    caller = body.get("caller")
    ordered = [k for k in _STATUS_ORDER if k in body] + sorted(k for k in body if k not in _STATUS_ORDER)
    loading: Table | None = None
    for key in ordered:
        value = body[key]
        label = _STATUS_ORDER.get(key, key)
        if key == "modules" and isinstance(value, list):
            columns = [Column("name", "NAME"), Column("state", "STATE", state=True)]
            if any(isinstance(m, dict) and m.get("error") for m in value):
                columns.append(Column("error", "ERROR"))
            blocks.insert(0, Table(columns, value, title="modules", empty="(no modules)"))  # what people look for
        elif key == "loading" and isinstance(value, list):
            if value:  # shown only while something loads; the phase says the rest
                columns = [
                    Column("name", "NAME"),
                    Column("state", "STATE", state=True),
                    Column("for", "FOR", right=True, fmt=duration),
                    Column("waiting", "WAITING", right=True),
                    Column("stage", "STAGE"),
                ]
                loading = Table(columns, value, title="loading")
        elif key == "caller" and isinstance(caller, dict):
            facts.append(("you", f"{caller.get('role', '?')} via {caller.get('transport', '?')}"))
        elif isinstance(value, dict):
            blocks.append(Fields(list(value.items()), title=key))
        elif key == "uptime":
            facts.append((label, duration(value)))
        elif key == "started":
            facts.append((label, when(value)))
        else:
            facts.append((label, value))
    if loading is not None:
        blocks.insert(1 if isinstance(body.get("modules"), list) else 0, loading)  # right under the modules
    return Group([Fields(facts), *blocks], data=body)


async def methods(ctx: Context) -> Output:
    from clients.cli.render import Column, Table

    async with ctx.client() as c:
        body = await c.call("sys.methods", {}, timeout=ctx.timeout)
    rows = [m for m in body.get("methods", []) if str(m.get("method", m.get("name", ""))).startswith(ctx.args.prefix)]
    for m in rows:
        m.setdefault("method", m.get("name"))
    columns = [
        Column("method", "METHOD"),
        Column("access", "ACCESS"),
        Column("stream", "STREAM"),
        Column("allowed", "YOU MAY"),
        Column("summary", "SUMMARY"),
    ]
    return Table(columns, rows, data={"methods": rows}, empty="(no methods)")


async def call(ctx: Context) -> Output | None:
    from clients.cli.events import parse_body
    from clients.cli.render import Text

    body = parse_body(ctx.args.pairs, ctx.args.body)
    r = ctx.render
    async with ctx.client() as c:
        if not ctx.args.stream:
            reply = await c.call(ctx.args.method, body, timeout=ctx.timeout)
            return Text(r.dumps(reply), reply)
        async with c.stream(ctx.args.method, body, timeout=ctx.timeout) as s:
            async for chunk in s:
                r.item({"chunk": chunk}, r.dumps(chunk, lines=True))
            result = s.result or {}
    r.item({"result": result}, r.dumps(result, lines=True))
    return None
