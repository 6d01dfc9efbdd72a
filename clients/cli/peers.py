"""``enigma peers list|pair|unpair``: the daemons (and clients) this daemon trusts, and pairing new ones.

Pairing is two commands on two machines. On the daemon that will accept: ``enigma peers pair --accept``
prints a one-time code and the command to type on the other side. On the other daemon:
``enigma peers pair ENDPOINT CODE``. Each side then has the other's key on its allow-list (with the role its
owner chose) and keeps a link to it. ``--as-client`` pairs *this CLI* (its key from ``enigma keys``) with the
accepting daemon instead, and prints that daemon's public key for ``--curve-server-key``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from clients.cli.exits import UsageError

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output

ROLES = ("device", "user", "admin")


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("peers", parents=[common], help="list, pair and unpair peer daemons")
    group.set_defaults(run=list_peers)
    verbs = group.add_subparsers(dest="verb", metavar="VERB", title="verbs", parser_class=type(group))
    p = verbs.add_parser("list", parents=[common], help="paired peers, their link state and models (default)")
    p.set_defaults(run=list_peers)
    p = verbs.add_parser(
        "pair",
        parents=[common],
        help="pair with another daemon (or --accept a pairing here)",
        description="With --accept: open a pairing window on this daemon and print the code to type on the "
        "other device. Otherwise: pair this daemon with the one whose window is open at ENDPOINT, using the "
        "CODE it shows.",
    )
    p.add_argument("endpoint", nargs="?", help="the pairing endpoint the other side printed (tcp://HOST:PORT)")
    p.add_argument("code", nargs="?", help="the code the other side shows (e.g. 123-456)")
    p.add_argument("--accept", action="store_true", help="open a pairing window here and show its code")
    p.add_argument("--role", choices=ROLES, default="user", help="what the other side may do here (default: user)")
    p.add_argument("--ttl", type=float, default=120.0, metavar="SECONDS", help="how long --accept waits (120)")
    p.add_argument("--as-client", action="store_true", help="pair this CLI's own key, not the daemon's")
    p.set_defaults(run=pair)
    p = verbs.add_parser("unpair", parents=[common], help="forget a peer: revoke its key and close its link")
    p.add_argument("peer", help="node id, name or key of the peer")
    p.set_defaults(run=unpair)


def _models(value: Any) -> str:
    return ", ".join(value) if value else "-"


async def list_peers(ctx: Context) -> Output:
    from clients.cli.render import Column, Group, Table, Text

    async with ctx.client() as c:
        body = await c.call("peers.list", {}, timeout=ctx.timeout)
    rows = [
        {
            **p,
            "kind": "daemon" if p.get("endpoints", {}).get("rpc") else "client",
            "state": p.get("state", "-"),
            "models": p.get("caps", {}).get("models", []),
            "load": p.get("caps", {}).get("load", ""),
            "rpc": p.get("endpoints", {}).get("rpc", "-"),
        }
        for p in body.get("peers", [])
    ]
    table = Table(
        [
            Column("node_id", "NODE"),
            Column("kind", "KIND"),
            Column("state", "STATE", state=True),
            Column("role", "ROLE"),
            Column("models", "MODELS", fmt=_models),
            Column("load", "LOAD", right=True),
            Column("rpc", "RPC"),
        ],
        rows,
        empty="(no peers paired: enigma peers pair --accept on one side, enigma peers pair ENDPOINT CODE on the other)",
    )
    disc = body.get("discovery", {})
    if disc.get("announcing"):
        note = f"announcing on {', '.join(disc.get('interfaces', []))}"
    else:
        note = f"not announcing: {disc.get('reason') or 'off'}"
    return Group(
        [table, Text(f"{body.get('node_id')}: {note}; {body.get('forwarded', 0)} requests forwarded")], data=body
    )


async def pair(ctx: Context) -> Output:
    a = ctx.args
    if a.accept:
        if a.endpoint or a.code:
            raise UsageError("peers pair --accept takes no ENDPOINT or CODE: it shows the code for the other side")
        return await _accept(ctx)
    if not a.endpoint or not a.code:
        raise UsageError("peers pair needs the ENDPOINT and CODE the other side shows (or --accept to show them)")
    if a.as_client:
        return await _pair_client(ctx)
    from clients.cli.render import Fields

    async with ctx.client() as c:
        body = await c.call(
            "peers.pair", {"endpoint": a.endpoint, "code": a.code, "role": a.role}, timeout=max(ctx.timeout, 15)
        )
    peer = body["peer"]
    return Fields(
        [
            ("paired with", peer["node_id"]),
            ("fingerprint", body["fingerprint"]),
            ("its role here", peer["role"]),
            ("our role there", peer.get("their_role") or "-"),
            ("link", peer.get("state", "-")),
        ],
        data=body,
        states=frozenset({"link"}),
    )


async def _accept(ctx: Context) -> Output:
    from clients.cli.render import Fields, Group, Text

    if not 5 <= ctx.args.ttl <= 3600:
        raise UsageError(f"--ttl must be between 5 and 3600 seconds, got {ctx.args.ttl:g}")
    async with ctx.client() as c:
        body = await c.call("peers.pair_open", {"role": ctx.args.role, "ttl": ctx.args.ttl}, timeout=ctx.timeout)
    fields = Fields(
        [
            ("code", body["code"]),
            ("endpoint", body["endpoint"]),
            ("this daemon", body["node_id"]),
            ("fingerprint", body["fingerprint"]),
            ("role given", body["role"]),
            ("open for", f"{ctx.args.ttl:g} s"),
        ]
    )
    hint = Text(
        f"On the other daemon's host, type:\n  enigma peers pair {body['endpoint']} {body['code']}\n"
        "and check that it prints this fingerprint."
    )
    return Group([fields, hint], data=body)


async def _pair_client(ctx: Context) -> Output:
    import socket

    from bus.auth import fingerprint, load_keypair
    from bus.pairing import Identity, pair_with
    from clients.cli.exits import CliError
    from clients.cli.render import Fields, Group, Text

    try:
        kp = load_keypair(ctx.key_file)
    except FileNotFoundError:
        raise CliError(f"no client key at {ctx.key_file} — create one with: enigma keys", code="no_key") from None
    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "client"
    me = Identity(f"client-{host}", kp.public, f"client-{host}")
    paired = await pair_with(ctx.args.endpoint, me, ctx.args.code, timeout=min(ctx.timeout, 30))
    data = {"peer": paired.peer.to_body(), "role": paired.role, "fingerprint": fingerprint(paired.peer.key)}
    fields = Fields(
        [
            ("paired with", paired.peer.node_id),
            ("its public key", paired.peer.key),
            ("fingerprint", fingerprint(paired.peer.key)),
            ("our role there", paired.role),
        ]
    )
    rpc = paired.peer.endpoints.get("rpc", "tcp://HOST:7700")
    events = paired.peer.endpoints.get("events", "tcp://HOST:7701")
    hint = Text(f"Connect with:\n  enigma --rpc {rpc} --events {events} --curve-server-key {paired.peer.key} status")
    return Group([fields, hint], data=data)


async def unpair(ctx: Context) -> Output:
    from clients.cli.render import Text

    async with ctx.client() as c:
        body = await c.call("peers.unpair", {"peer": ctx.args.peer}, timeout=ctx.timeout)
    return Text(f"unpaired {body['unpaired']}: its key is revoked and its link closed", data=body)
