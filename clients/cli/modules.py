"""``enigma modules list|load|unload``: see and switch the daemon's modules.

``load`` and ``unload`` wait for the daemon's answer, which comes once the module reached its new state (or
failed with the reason), so the command's exit code tells a script whether the switch happened.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output, Table


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("modules", parents=[common], help="list, load and unload modules")
    group.set_defaults(run=list_modules)  # ``enigma modules`` alone lists them
    verbs = group.add_subparsers(dest="verb", metavar="VERB", title="verbs", parser_class=type(group))
    p = verbs.add_parser("list", parents=[common], help="list every known module and its state (default)")
    p.set_defaults(run=list_modules)
    p = verbs.add_parser("load", parents=[common], help="load a module (and wait until it is up)")
    p.add_argument("name", help="module name, as shown by: enigma modules list")
    p.set_defaults(run=load)
    p = verbs.add_parser("unload", parents=[common], help="unload a module (and wait until it is down)")
    p.add_argument("name", help="module name")
    p.set_defaults(run=unload)


def _fmt_list(value: Any) -> str:
    from clients.cli.render import plain

    return plain(value) if value else "-"


def modules_table(modules: list[dict[str, Any]], *, title: str | None = None) -> Table:
    """The module table shared by ``modules list`` and ``status``; a failed module shows its error."""
    from clients.cli.render import Column, Table

    rows = []
    for m in modules:
        row = dict(m)
        if row.get("error"):
            row["description"] = f"{row.get('description') or ''} [error: {row['error']}]".strip()
        rows.append(row)
    columns = [
        Column("name", "NAME"),
        Column("state", "STATE", state=True),
        Column("depends", "DEPENDS", fmt=_fmt_list),
        Column("description", "DESCRIPTION"),
    ]
    return Table(columns, rows, data={"modules": modules}, title=title, empty="(no modules)")


async def list_modules(ctx: Context) -> Output:
    async with ctx.client() as c:
        body = await c.call("module.list", {}, timeout=ctx.timeout)
    return modules_table(list(body.get("modules", [])))


async def load(ctx: Context) -> Output:
    return await _switch(ctx, "module.load", "loaded")


async def unload(ctx: Context) -> Output:
    return await _switch(ctx, "module.unload", "unloaded")


async def _switch(ctx: Context, method: str, done: str) -> Output:
    from clients.cli.render import Text

    name = ctx.args.name
    async with ctx.client() as c:
        body = await c.call(method, {"name": name}, timeout=ctx.timeout)
    state = body.get("state")
    shown = ctx.render.paint(str(state), state) if state else done
    return Text(f"{done} {body.get('name', name)} ({shown})" if state else f"{done} {name}", body)
