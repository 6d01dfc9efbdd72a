"""What every command gets: resolved endpoints, the renderer, and a connected SDK client.

Resolving options here (flag, then ``ENIGMA_*`` environment, then ``bus.defaults``) keeps the rule in one place
for every command group, and opening the client here is where "no answer" becomes the ``Unreachable`` line with
its hint. Nothing in this module imports the SDK or ZeroMQ until a command actually connects.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bus.paths import config_dir
from clients.cli.exits import CliError, UsageError

if TYPE_CHECKING:
    from bus.auth import ClientCurve
    from clients.cli.render import Renderer
    from clients.sdk import Client

DEFAULT_TIMEOUT = 10.0
# Seconds to complete the ZeroMQ handshake before calling the daemon unreachable. Without CURVE, libzmq's I/O
# threads do the handshake even while the daemon's event loop is busy, so on loopback it takes milliseconds;
# with CURVE the daemon's loop must also answer the ZAP admission request, and a LAN adds its latency.
CONNECT_TIMEOUT_LOCAL = 2.0
CONNECT_TIMEOUT_CURVE_OR_REMOTE = 5.0
ENV_SERVER_KEY = "ENIGMA_SERVER_KEY"


def default_key_file() -> Path:
    """Where ``enigma keys`` writes the client key pair and where CURVE connections read it."""
    return config_dir() / "client.key"


class Context:
    def __init__(self, args: argparse.Namespace, renderer: Renderer) -> None:
        from bus.defaults import events_endpoint, rpc_endpoint

        self.args = args
        self.render = renderer
        self.rpc: str = rpc_endpoint(args.rpc)
        self.events: str = events_endpoint(args.events)
        self.verbose: bool = bool(args.verbose)
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
        self.timeout: float = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
        self.key_file: Path = Path(args.key_file) if args.key_file else default_key_file()

    # -- CURVE ---------------------------------------------------------------------------------------------
    def server_key(self) -> str | None:
        """The daemon's public key from ``--curve-server-key``, ``--curve-server-key-file`` or the environment."""
        if self.args.curve_server_key:
            return str(self.args.curve_server_key).strip()
        if self.args.curve_server_key_file:
            return _read_server_key(Path(self.args.curve_server_key_file))
        return os.environ.get(ENV_SERVER_KEY) or None

    def curve(self) -> ClientCurve | None:
        server = self.server_key()
        if server is None:
            return None
        from bus.auth import ClientCurve, check_key, load_keypair
        from bus.errors import BadRequest

        try:
            check_key(server, "the daemon's public key")
            keypair = load_keypair(self.key_file)
        except FileNotFoundError:
            raise CliError(f"no client key at {self.key_file} — create one with: enigma keys", code="no_key") from None
        except BadRequest as exc:
            raise UsageError(exc.message) from None
        return ClientCurve(server, keypair)

    # -- the connection ------------------------------------------------------------------------------------
    @asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """A client whose link to the daemon is up; a daemon that cannot be reached becomes ``Unreachable``.

        ZeroMQ connects in the background and never reports "refused", so without this check a stopped daemon
        would cost the whole ``--timeout`` per command. The handshake on loopback takes milliseconds; a daemon
        that has not completed it within ``CONNECT_TIMEOUT_*`` (or ``--timeout``, if shorter) is not there.
        """
        from bus.errors import Unavailable
        from clients.sdk import Client

        curve = self.curve()
        local = self.is_local()
        connect_timeout = CONNECT_TIMEOUT_LOCAL if local and curve is None else CONNECT_TIMEOUT_CURVE_OR_REMOTE
        async with Client(self.rpc, self.events, timeout=self.timeout, curve=curve) as c:
            if not await c.wait_connected(min(self.timeout, connect_timeout)):
                raise self.unreachable()
            try:
                yield c
            except Unavailable as exc:
                # The SDK's own "no answer" error names the endpoint; one sent by the daemon does not.
                if c.connected or exc.details.get("endpoint") != self.rpc:
                    raise
                raise self.unreachable() from exc

    def is_local(self) -> bool:
        """Whether the daemon's endpoint is on this host; one that cannot be parsed counts as local."""
        from bus.auth import is_loopback

        try:
            return is_loopback(self.rpc)
        except Exception:
            return True

    def unreachable(self) -> Exception:
        from clients.cli.exits import Unreachable, unreachable_message

        remote = not self.is_local()
        return Unreachable(unreachable_message(self.rpc, remote=remote, curve=self.server_key() is not None))


def _read_server_key(path: Path) -> str:
    """A server key file is either the bare Z85 key or a key-pair JSON file (only ``public`` is read)."""
    import json

    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(f"cannot read the daemon's key file {path}: {exc.strerror or exc}") from None
    if text.startswith("{"):
        try:
            public = json.loads(text).get("public")
        except (ValueError, AttributeError):
            public = None
        if not isinstance(public, str):
            raise UsageError(f"{path} is JSON but has no 'public' key string")
        return public
    return text
