"""``enigma discover``: the daemons announced on the LAN (mDNS ``_enigma._tcp`` and UDP broadcast beacons).

By default the daemon this CLI talks to looks, on the interfaces it is configured for (``peers.discover``).
With ``--interface ADDR`` this machine looks itself, on exactly those IPv4 addresses and nowhere else (needs
the ``lan`` extra: zeroconf). Discovery only finds: nothing found is trusted until paired (``enigma peers``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "discover",
        parents=[common],
        help="list the daemons announced on the LAN",
        description="List the Enigma daemons announced on the LAN: their node id, address, key fingerprint "
        "and capabilities. Asks the daemon to look, or looks from here with --interface.",
    )
    p.add_argument(
        "--interface",
        action="append",
        metavar="ADDR",
        default=None,
        help="look from this machine on this IPv4 address (repeatable); default: ask the daemon",
    )
    p.add_argument("--duration", type=float, default=2.0, metavar="SECONDS", help="how long to listen (default: 2)")
    p.set_defaults(run=discover)


def _models(value: Any) -> str:
    return ", ".join(value) if value else "-"


def records_table(records: list[dict[str, Any]]) -> Output:
    from clients.cli.render import Column, Table

    rows = [
        {
            **r,
            "models": r.get("caps", {}).get("models", []),
            "load": r.get("caps", {}).get("load", 0),
            "paired": "yes" if r.get("paired") else "no" if "paired" in r else "?",
        }
        for r in records
    ]
    columns = [
        Column("node_id", "NODE"),
        Column("address", "ADDRESS"),
        Column("via", "VIA"),
        Column("fingerprint", "FINGERPRINT"),
        Column("models", "MODELS", fmt=_models),
        Column("load", "LOAD", right=True),
        Column("paired", "PAIRED"),
        Column("rpc", "RPC"),
    ]
    return Table(columns, rows, data={"records": records}, empty="(no daemons announced)")


async def discover(ctx: Context) -> Output:
    from clients.cli.exits import UsageError

    duration = ctx.args.duration
    if not 0.1 <= duration <= 30:
        raise UsageError(f"--duration must be between 0.1 and 30 seconds, got {duration:g}")
    if ctx.args.interface:
        from bus.discovery import browse

        found = await browse(list(ctx.args.interface), duration)
        return records_table([r.to_dict() for r in found])
    async with ctx.client() as c:
        body = await c.call("peers.discover", {"duration": duration}, timeout=max(ctx.timeout, duration + 5))
    return records_table(list(body.get("records", [])))
