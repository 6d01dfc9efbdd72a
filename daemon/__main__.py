"""``enigmad``: run the daemon, check its config, or manage its keys.

Exit codes: 0 clean stop; 1 could not start (e.g. the store is from a newer enigmad, a port is taken);
2 invalid configuration or usage (the message names the key and where it came from).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from bus.service import ROLES
from daemon.config import LOG_LEVELS, Config, ConfigError, load_config

FLAG_KEYS = {
    "rpc": "daemon.rpc",
    "events": "daemon.events",
    "data_dir": "daemon.data_dir",
    "log_level": "daemon.log_level",
    "node_id": "daemon.node_id",
}


def _add_common(p: argparse.ArgumentParser, suppress: bool) -> None:
    default: Any = argparse.SUPPRESS if suppress else None
    p.add_argument("--config", metavar="PATH", default=default, help="TOML config file (default: XDG config dir)")
    p.add_argument("--rpc", metavar="ENDPOINT", default=default, help="request endpoint, e.g. tcp://127.0.0.1:7700")
    p.add_argument("--events", metavar="ENDPOINT", default=default, help="event endpoint, e.g. tcp://127.0.0.1:7701")
    p.add_argument("--data-dir", metavar="DIR", default=default, help="state directory (default: XDG data dir)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=default, help="log level for every area")
    p.add_argument("--node-id", metavar="ID", default=default, help="this node's id (default: derived and kept)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="enigmad", description="Enigma daemon: owns the engine, modules and store.")
    _add_common(p, suppress=False)
    p.add_argument("--check-config", action="store_true", help="validate, print the effective config, and exit")
    sub = p.add_subparsers(dest="command", metavar="{keys,restore}")
    keys = sub.add_parser("keys", help="manage the server key pair and the client allow-list")
    _add_common(keys, suppress=True)
    ks = keys.add_subparsers(dest="keys_action", metavar="{show,list,allow,revoke}")
    ks.add_parser("show", help="print the server public key (created on first use)")
    ks.add_parser("list", help="list the allowed client keys")
    a = ks.add_parser("allow", help="admit a client key with a role")
    a.add_argument("key", help="the client's Z85 public key (40 characters)")
    a.add_argument("--role", required=True, choices=ROLES, help="what the key may call")
    a.add_argument("--name", default="", help="a human name for the key")
    r = ks.add_parser("revoke", help="remove a client key (by key or by name)")
    r.add_argument("key", metavar="KEY_OR_NAME")
    rs = sub.add_parser("restore", help="restore a backup (enigma backup create) into a stopped daemon's data dir")
    _add_common(rs, suppress=True)
    rs.add_argument("file", metavar="FILE", help="the backup archive (.tar.gz)")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {key: getattr(args, attr, None) for attr, key in FLAG_KEYS.items()}
    return load_config(getattr(args, "config", None), overrides=overrides)


_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def _protect_keys(argv: list[str]) -> list[str]:
    """A pasted Z85 key may start with ``-``; argparse would take it for an option. Such a token (40 Z85
    characters, not ``--…``) is moved behind ``--`` at the end, where it can only be the positional key."""
    keys = [a for a in argv if len(a) == 40 and a.startswith("-") and not a.startswith("--") and set(a) <= _Z85]
    if not keys or "--" in argv:
        return argv
    return [a for a in argv if a not in keys] + ["--", *keys]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_protect_keys(sys.argv[1:] if argv is None else list(argv)))
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"enigmad: config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "keys":
        from daemon import keys

        return keys.run(config, args)
    if args.command == "restore":
        from pathlib import Path

        from daemon.backup import restore_offline

        return restore_offline(config, Path(args.file), sys.stdout, sys.stderr)
    if args.check_config:
        try:
            from daemon.modules import REGISTRY

            config.check_modules(REGISTRY)
        except ConfigError as exc:
            print(f"enigmad: config error: {exc}", file=sys.stderr)
            return 2
        print(f"# config file: {config.path or '(none)'}", file=sys.stderr)
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    return _serve(config, args)


def _serve(config: Config, args: argparse.Namespace) -> int:
    from bus.auth import is_loopback
    from daemon import logging as dlog

    for key in ("rpc", "events"):
        endpoint = getattr(config.daemon, key)
        if not config.security.curve and not is_loopback(endpoint):
            print(
                f"enigmad: refusing to serve daemon.{key}={endpoint} ({config.origin('daemon.' + key)}) without "
                "CURVE keys: set [security] curve = true (see `enigmad keys show`) or bind a loopback address",
                file=sys.stderr,
            )
            return 2
    dlog.setup(config.daemon.log_level, config.daemon.log_levels)

    from bus.errors import BusError
    from daemon.app import serve
    from daemon.config import ConfigError as _ConfigError
    from daemon.store import StoreError

    try:
        return asyncio.run(serve(config, reload_config=lambda: config_from_args(args)))
    except _ConfigError as exc:
        print(f"enigmad: config error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, BusError, OSError) as exc:
        message = exc.message if isinstance(exc, BusError) else str(exc)
        print(f"enigmad: cannot start: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
