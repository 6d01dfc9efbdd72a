"""``enigma keys``: this client's CURVE identity for talking to a daemon on another host.

The key pair lives in ``$XDG_CONFIG_HOME/enigma/client.key`` (mode 0600). Creating it prints the public key
and its fingerprint, which the daemon's operator allows with ``enigmad keys allow``; the secret never leaves
the file. An existing key is never replaced silently: every daemon that trusts it would lock this client out.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from clients.cli.exits import CliError

if TYPE_CHECKING:
    from clients.cli.context import Context
    from clients.cli.render import Output


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "keys",
        parents=[common],
        help="create (or --show) this client's CURVE key pair",
        description="Create this client's CURVE key pair for connecting to a remote enigmad, and print the "
        "public key to give to the daemon's operator. The file is --key-file (default "
        "$XDG_CONFIG_HOME/enigma/client.key).",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--show", action="store_true", help="print the existing public key and fingerprint")
    mode.add_argument("--force", action="store_true", help="replace an existing key pair with a new one")
    p.set_defaults(run=keys)


def keys(ctx: Context) -> Output:
    from bus.auth import fingerprint, generate_keypair, load_keypair, save_keypair
    from bus.errors import BadRequest

    path = ctx.key_file
    if ctx.args.show or (path.exists() and not ctx.args.force):
        try:
            kp = load_keypair(path)
        except FileNotFoundError:
            raise CliError(f"no client key at {path} — create one with: enigma keys", code="no_key") from None
        except BadRequest as exc:
            raise CliError(f"{exc.message} — replace it with: enigma keys --force", code="bad_key") from None
        if not ctx.args.show:
            raise CliError(
                f"a client key already exists at {path} (fingerprint {fingerprint(kp.public)}) — "
                "print it with: enigma keys --show, or replace it with: enigma keys --force",
                code="exists",
            )
        return _output(path, kp.public, fingerprint(kp.public), created=False)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    kp = generate_keypair()
    save_keypair(path, kp)
    return _output(path, kp.public, fingerprint(kp.public), created=True)


def _output(path: Any, public: str, fp: str, *, created: bool) -> Output:
    from clients.cli.render import Fields, Group, Text

    data = {"public": public, "fingerprint": fp, "path": str(path), "created": created}
    fields = Fields([("public key", public), ("fingerprint", fp), ("file", str(path))])
    hint = Text(
        "Allow it on the daemon host with:\n"
        f"  enigmad keys allow {public} --role user --name $(hostname)\n"
        "then connect with: enigma --rpc tcp://HOST:7700 --events tcp://HOST:7701 --curve-server-key KEY status"
    )
    return Group([fields, hint], data=data)
