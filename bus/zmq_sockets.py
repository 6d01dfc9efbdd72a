"""The ZeroMQ server's sockets: which ones, with which options, bound where, and torn down in what order.

A ROUTER for requests, an XPUB for events and a monitor on the ROUTER (connections come and go), all in one
context; with CURVE, every socket is a CURVE server in the ``enigma`` ZAP domain and the ``ZapHandler`` that
admits keys is bound and answering first, so no handshake waits on an admission nobody answers. Binding a non-loopback
address without keys is refused before any socket exists.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import zmq

from bus.auth import ServerAuth, is_loopback
from bus.errors import Forbidden, Unavailable
from bus.wire import set_heartbeat
from bus.zap import ZAP_DOMAIN, ZapHandler

if TYPE_CHECKING:
    from bus.zmq_server import ServerLimits


def check_exposure(auth: ServerAuth | None, endpoints: dict[str, str]) -> None:
    """Raise ``Forbidden`` for a non-loopback endpoint when there are no keys to protect it with."""
    for what, ep in endpoints.items():
        if auth is None and not is_loopback(ep):
            raise Forbidden(
                f"refusing to bind {what} endpoint {ep} without CURVE: a non-loopback address needs the "
                "server key pair and an allow-list (create them with `enigmad keys show` and "
                "`enigmad keys allow KEY --role R`), or bind a loopback address such as tcp://127.0.0.1:7700",
                {"endpoint": ep},
            )


class ServerSockets:
    """Owns the context and every socket of one server; ``open`` binds them, ``close`` undoes it all."""

    def __init__(self, limits: ServerLimits, heartbeat: float, auth: ServerAuth | None, curve: bool) -> None:
        self._limits = limits
        self._heartbeat = heartbeat
        self._auth = auth
        self.curve = curve
        self.ctx: zmq.Context[Any] | None = None
        self.router: zmq.Socket | None = None
        self.xpub: zmq.Socket | None = None
        self.monitor: zmq.Socket | None = None
        self.zap: ZapHandler | None = None

    def open(self, rpc: str, events: str) -> dict[str, str]:
        """Create and bind everything; returns the bound endpoints (real ports for port 0). Atomic on failure."""
        self.ctx = zmq.Context()
        try:
            if self.curve:
                assert self._auth is not None
                self._auth.allow.load()
                self.zap = ZapHandler(self.ctx, self._auth.allow)
                self.zap.start()  # before any CURVE socket: no handshake may wait on an admission nobody answers
            self.router = self._socket(zmq.ROUTER)
            self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.router.sndhwm = self._limits.sndhwm
            self.router.rcvhwm = self._limits.rcvhwm
            self.xpub = self._socket(zmq.XPUB)
            self.xpub.sndhwm = self._limits.events_sndhwm
            self.monitor = self.router.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            return {"rpc": self._bind(self.router, rpc), "events": self._bind(self.xpub, events)}
        except BaseException:
            self.close()
            self.term()
            raise

    def _socket(self, kind: int) -> zmq.Socket:
        assert self.ctx is not None
        sock = self.ctx.socket(kind)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_msg_size)
        set_heartbeat(sock, self._heartbeat)
        if self.curve:
            assert self._auth is not None
            sock.curve_server = True
            sock.curve_publickey = self._auth.keypair.public.encode("ascii")
            sock.curve_secretkey = self._auth.keypair.secret.encode("ascii")
            sock.zap_domain = ZAP_DOMAIN
        return sock

    @staticmethod
    def _bind(sock: zmq.Socket, endpoint: str) -> str:
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise Unavailable(f"cannot bind {endpoint}: {exc.strerror}", {"endpoint": endpoint}) from exc
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self, linger: int = 0) -> None:
        """Close every socket; queued answers and events get ``linger`` ms to leave. The context stays."""
        if self.router is not None and self.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.router.disable_monitor()
        if self.zap is not None:
            self.zap.close()
            self.zap = None
        if self.monitor is not None:
            self.monitor.close(linger=0)
        for sock in (self.router, self.xpub):
            if sock is not None:
                sock.close(linger=linger)
        self.router = self.xpub = self.monitor = None

    def term(self) -> None:
        """Terminate the context: blocks until lingering messages have left (run it off the loop when it may)."""
        ctx, self.ctx = self.ctx, None
        if ctx is not None:
            ctx.term()
