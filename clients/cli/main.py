"""``enigma``: the command-line client of enigmad.

This module is the root only: it builds the argument parser from the command groups listed in ``GROUPS``,
resolves the global options, runs the chosen command and turns every failure into one line and an exit code
(see ``clients.cli.exits``).

A command group is a module with ``register(subparsers, common)`` that adds its parsers (``parents=[common]``
gives them the global options) and sets ``run=<function>`` on each; ``run(ctx)`` gets a ``Context`` (endpoints,
renderer, ``ctx.client()``), may be async, and returns a ``render`` output (or prints a stream through
``ctx.render.item`` and returns None). Adding a group (``chat``, ``models``, ``robots`` …) is that module plus
one line in ``GROUPS``.

Startup cost matters for a tool people type all day, so importing this module and parsing arguments touch only
the standard library's ``argparse``: the SDK, ZeroMQ, msgpack, asyncio and the renderer are imported by the
command that needs them, and ``enigma --help`` never loads them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

# Command groups, in the order ``enigma --help`` lists them. One line per group.
GROUPS: tuple[str, ...] = (
    "clients.cli.system",  # status, ping, methods, call
    "clients.cli.modules",  # modules list|load|unload
    "clients.cli.events",  # events [PREFIX], publish TOPIC
    "clients.cli.keys",  # keys
    "clients.cli.ask",  # ask TEXT
    "clients.cli.chat",  # chat
    "clients.cli.sessions",  # sessions list|show|rm
    "clients.cli.models",  # models list|show|add|rm|load
    "clients.cli.robots",  # robots list|send|watch
    "clients.cli.backup",  # backup create|restore
    "clients.cli.doctor",  # doctor
    "clients.cli.discover",  # discover
    "clients.cli.peers",  # peers list|pair|unpair
)

EPILOG = """\
environment:
  ENIGMA_RPC, ENIGMA_EVENTS   default endpoints (else tcp://127.0.0.1:7700 and :7701)
  ENIGMA_SERVER_KEY           the daemon's public key, for CURVE connections to a remote daemon
  NO_COLOR                    never colour the output

exit status:
  0 ok, 1 the daemon (or a local operation) reported an error, 2 usage error,
  3 enigmad unreachable, 4 no reply within --timeout, 130 interrupted
"""


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command accepts, before or after its name.

    The root parser holds the real defaults; each subcommand repeats the options with ``SUPPRESS`` defaults so
    that ``enigma status --json`` and ``enigma --json status`` mean the same and neither resets the other.
    """

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("global options")
    g.add_argument("--rpc", metavar="ENDPOINT", default=d(None), help="request endpoint (default: $ENIGMA_RPC)")
    g.add_argument("--events", metavar="ENDPOINT", default=d(None), help="event endpoint (default: $ENIGMA_EVENTS)")
    g.add_argument("--json", action="store_true", default=d(False), help="print JSON (JSON lines for streams)")
    g.add_argument(
        "--timeout", type=float, metavar="SECONDS", default=d(None), help="give up waiting for a reply (default: 10)"
    )
    g.add_argument(
        "-v", "--verbose", action="store_true", default=d(False), help="tracebacks on errors, progress notes on stderr"
    )
    g.add_argument(
        "--curve-server-key", metavar="KEY", default=d(None), help="the daemon's CURVE public key (Z85), for remote"
    )
    g.add_argument(
        "--curve-server-key-file", metavar="PATH", default=d(None), help="file holding the daemon's public key"
    )
    g.add_argument(
        "--key-file", metavar="PATH", default=d(None), help="client key pair (default: ~/.config/enigma/client.key)"
    )


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``enigma: …`` line plus a pointer to --help, exit 2."""

    def error(self, message: str) -> Any:
        from clients.cli.exits import USAGE

        self.exit(USAGE, f"enigma: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="enigma",
        description="Talk to enigmad, the Enigma AI daemon: status, modules, events, keys.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--version", action=_VersionAction, nargs=0, help="print the version and exit")
    _global_options(root, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    sub = root.add_subparsers(dest="command", metavar="COMMAND", title="commands", parser_class=_Parser)
    for name in GROUPS:
        importlib.import_module(name).register(sub, common)
    return root


class _VersionAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("enigma")
        except PackageNotFoundError:
            v = "unknown"
        sys.stdout.write(f"enigma {v}\n")
        parser.exit(0)


def _join_key_values(argv: list[str]) -> list[str]:
    """``--curve-server-key -Ab…``: a Z85 key may start with ``-``, which argparse would take for an option,
    so an option that takes a key is joined to its value (``--curve-server-key=-Ab…``)."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--curve-server-key":
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_join_key_values(list(sys.argv[1:] if argv is None else argv)))
    run = getattr(args, "run", None)
    if run is None:
        # ``enigma`` alone: show what can follow instead of failing.
        parser.print_help()
        return 0
    return _execute(run, args)


def _execute(run: Any, args: argparse.Namespace) -> int:
    from clients.cli import exits
    from clients.cli.render import Renderer

    renderer = Renderer(json_mode=bool(args.json))
    try:
        from clients.cli.context import Context

        ctx = Context(args, renderer)
        output = run(ctx)
        if hasattr(output, "__await__"):
            import asyncio

            output = asyncio.run(output)
        if output is not None:
            renderer.show(output)
        return exits.OK
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (``enigma events | head``): not an error worth a line
        return exits.OK
    except Exception as exc:
        message, code, exit_code, details = exits.describe(exc)
        if args.verbose:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        try:
            renderer.error(message, code=code, exit_code=exit_code, details=details)
        except BrokenPipeError:
            _silence_stdout()
        return exit_code


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
