"""``enigmad keys …``: the server's CURVE key pair and the allow-list of client keys, both in the data dir.

A running daemon re-reads the allow-list when the file changes (and on SIGHUP), so ``allow`` and ``revoke``
take effect for new connections without a restart.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from bus.auth import AllowList, fingerprint
from bus.errors import BusError
from daemon.app import server_auth
from daemon.config import Config


def show(config: Config, out: TextIO = sys.stdout) -> int:
    """Print the server public key (creating the pair on first use): clients need it to connect."""
    existed = config.key_file.exists()
    auth = server_auth(config)
    print(f"public key:  {auth.keypair.public}", file=out)
    print(f"fingerprint: {fingerprint(auth.keypair.public)}", file=out)
    print(f"key file:    {config.key_file}{'' if existed else ' (created now)'}", file=out)
    return 0


def list_keys(config: Config, out: TextIO = sys.stdout) -> int:
    entries = AllowList(config.allow_file).load().entries()
    if not entries:
        print(f"no client keys allowed yet ({config.allow_file})", file=out)
        return 0
    for e in entries:
        print(f"{e['role']:<7} {e['name'] or '-':<20} {e['fingerprint']}  {e['key']}", file=out)
    return 0


def allow(config: Config, key: str, role: str, name: str, out: TextIO = sys.stdout) -> int:
    allow_list = AllowList(config.allow_file).load()
    allow_list.add(key, role, name)
    allow_list.save()
    print(f"allowed {name or key} as {role} ({fingerprint(key)})", file=out)
    return 0


def revoke(config: Config, key_or_name: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    allow_list = AllowList(config.allow_file).load()
    if not allow_list.remove(key_or_name):
        print(f"enigmad: no allowed key or name {key_or_name!r} in {config.allow_file}", file=err)
        return 1
    allow_list.save()
    print(f"revoked {key_or_name}", file=out)
    return 0


def run(config: Config, args: argparse.Namespace) -> int:
    """Dispatch ``enigmad keys <action>``; bus errors (a malformed key, an unreadable file) are one line."""
    action = getattr(args, "keys_action", None)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if action == "show":
            return show(config)
        if action == "list":
            return list_keys(config)
        if action == "allow":
            return allow(config, args.key, args.role, args.name or "")
        if action == "revoke":
            return revoke(config, args.key)
    except BusError as exc:
        print(f"enigmad: {exc.message}", file=sys.stderr)
        return 2
    print("enigmad: keys needs an action: show, list, allow or revoke", file=sys.stderr)
    return 2
