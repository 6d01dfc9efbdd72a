"""``enigma models list|show|add|rm|load``: the daemon's model store and which model serves."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output

LOAD_TIMEOUT = 600.0  # loading a large model reads gigabytes


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("models", parents=[common], help="list, inspect, add, remove and load models")
    group.set_defaults(run=list_models)
    verbs = group.add_subparsers(dest="verb", metavar="VERB", title="verbs", parser_class=type(group))
    p = verbs.add_parser("list", parents=[common], help="models in the store; * marks the loaded one (default)")
    p.set_defaults(run=list_models)
    p = verbs.add_parser("show", parents=[common], help="what a model's metadata says")
    p.add_argument("name")
    p.set_defaults(run=show)
    p = verbs.add_parser("add", parents=[common], help="add a GGUF file or model directory (path on the daemon host)")
    p.add_argument("path")
    p.add_argument("--name", help="store it under this name (default: from the file name)")
    p.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    p.set_defaults(run=add)
    p = verbs.add_parser("rm", aliases=["remove"], parents=[common], help="remove a model from the store")
    p.add_argument("name")
    p.set_defaults(run=remove)
    p = verbs.add_parser("load", parents=[common], help="serve this model from now on (waits until loaded)")
    p.add_argument("name")
    p.set_defaults(run=load)


def _size(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    n = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def _params(value: Any) -> str:
    if not isinstance(value, int):
        return "-"
    return f"{value / 1e9:.1f}B" if value >= 1e9 else f"{value / 1e6:.0f}M"


async def list_models(ctx: Context) -> Output:
    from clients.cli.render import Column, Table

    async with ctx.client() as c:
        body = await c.call("model.list", {}, timeout=max(ctx.timeout, 30.0))
    rows = [dict(m, mark="*" if m.get("loaded") else "") for m in body["models"]]
    columns = [
        Column("mark", ""),
        Column("name", "NAME"),
        Column("arch", "ARCH"),
        Column("params", "PARAMS", right=True, fmt=_params),
        Column("quant", "QUANT"),
        Column("size", "SIZE", right=True, fmt=_size),
        Column("context", "CONTEXT", right=True),
        Column("path", "PATH"),
    ]
    return Table(columns, rows, data=body, empty="(no models)")


async def show(ctx: Context) -> Output:
    from clients.cli.render import Fields

    async with ctx.client() as c:
        info = await c.call("model.show", {"name": ctx.args.name}, timeout=max(ctx.timeout, 30.0))
    items = [(k, v) for k, v in info.items() if not isinstance(v, dict | list)]
    return Fields(items, data=info)


async def add(ctx: Context) -> Output:
    from clients.cli.render import Text

    body: dict[str, Any] = {"path": ctx.args.path, "copy": bool(ctx.args.copy)}
    if ctx.args.name:
        body["name"] = ctx.args.name
    async with ctx.client() as c:
        entry = await c.call("model.add", body, timeout=max(ctx.timeout, LOAD_TIMEOUT))
    return Text(f"added {entry['name']} ({entry.get('arch') or '?'}, {_size(entry.get('size'))})", entry)


async def remove(ctx: Context) -> Output:
    from clients.cli.render import Text

    async with ctx.client() as c:
        body = await c.call("model.remove", {"name": ctx.args.name}, timeout=ctx.timeout)
    return Text(f"removed {body['removed']}", body)


async def load(ctx: Context) -> Output:
    from clients.cli.render import Text

    async with ctx.client() as c:
        body = await c.call("model.load", {"name": ctx.args.name}, timeout=max(ctx.timeout, LOAD_TIMEOUT))
    return Text(f"loaded {body['loaded']} (context {body.get('context_length', '?')})", body)
