"""``enigma sessions list|show|rm``: the stored conversations."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("sessions", parents=[common], help="list, show and delete chat sessions")
    group.set_defaults(run=list_sessions)
    verbs = group.add_subparsers(dest="verb", metavar="VERB", title="verbs", parser_class=type(group))
    p = verbs.add_parser("list", parents=[common], help="recent sessions first (default)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N sessions (default 50)")
    p.set_defaults(run=list_sessions)
    p = verbs.add_parser("show", parents=[common], help="a session's messages")
    p.add_argument("id", help="session id, as shown by: enigma sessions list")
    p.set_defaults(run=show)
    p = verbs.add_parser("rm", parents=[common], help="delete a session and its messages")
    p.add_argument("id", nargs="+", help="session id(s)")
    p.set_defaults(run=remove)


async def list_sessions(ctx: Context) -> Output:
    from clients.cli.render import Column, Table, clock

    limit = getattr(ctx.args, "limit", 50)
    async with ctx.client() as c:
        body = await c.call("session.list", {"limit": max(1, min(limit, 1000))}, timeout=ctx.timeout)
    sessions = body["sessions"]
    columns = [
        Column("id", "ID"),
        Column("updated", "UPDATED", fmt=clock),
        Column("messages", "MSGS", right=True),
        Column("persona", "PERSONA"),
        Column("title", "TITLE"),
    ]
    return Table(columns, sessions, data=body, empty="(no sessions)")


async def show(ctx: Context) -> Output:
    from clients.cli.render import Text

    async with ctx.client() as c:
        body = await c.call("session.history", {"id": ctx.args.id}, timeout=ctx.timeout)
    s = body["session"]
    lines = [f"session {s['id']}  {s['title'] or '-'}" + (f"  (persona {s['persona']})" if s["persona"] else "")]
    for m in body["messages"]:
        flag = "" if m["complete"] else "  [incomplete]"
        lines.append(f"\n{m['role']}:{flag}\n{m['text']}")
    return Text("\n".join(lines), body)


async def remove(ctx: Context) -> Output:
    from clients.cli.render import Text

    removed = []
    async with ctx.client() as c:
        for sid in ctx.args.id:
            removed.append(await c.call("session.delete", {"id": sid}, timeout=ctx.timeout))
    text = "\n".join(f"deleted session {r['deleted']} ({r['messages']} messages)" for r in removed)
    return Text(text, {"deleted": removed})
