"""CURVE admission: the ZAP handler that lets in only allow-listed keys and names each caller by its key.

libzmq asks a ZAP handler (a REP socket on ``inproc://zeromq.zap.01`` in the same context) about every CURVE
handshake. We admit a key when it is on the allow-list and answer with the key itself as the ZAP user id, so
every message from that connection carries it as its ``User-Id`` property; the server turns it into a role.
The allow-list file is re-read when it changes, so ``enigmad keys allow|revoke`` needs no restart.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import zmq
from zmq.utils import z85

from bus.auth import AllowList
from bus.errors import BusError
from bus.wire import LogLimiter, Pump

log = logging.getLogger("enigma.bus.zmq")

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_DOMAIN: Final = b"enigma"


class ZapHandler:
    def __init__(self, ctx: zmq.Context[Any], allow: AllowList) -> None:
        self.allow = allow
        self.refused = 0
        self._warn = LogLimiter(log)
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)
        self._pump: Pump | None = None

    def start(self) -> None:
        """Start answering (on the running loop); call before any CURVE socket can see a handshake."""
        self._pump = Pump(self.sock, self._on_request, name="zap")

    def reload(self) -> None:
        """Re-read the allow-list if its file changed; a broken file keeps the previous list in force."""
        try:
            self.allow.reload_if_changed()
        except BusError as exc:
            log.error("keeping the previous allow-list: %s", exc.message)

    def _on_request(self, msg: list[bytes]) -> None:
        if len(msg) < 6:
            return  # libzmq never sends this; nothing to answer without a request id
        version, request_id, _domain, address, _identity, mechanism = msg[:6]
        status, text, user = b"400", b"not allowed", b""
        if version == b"1.0" and mechanism == b"CURVE" and len(msg) == 7:
            key = z85.encode(msg[6]).decode("ascii")
            self.reload()
            if self.allow.role_of(key) is not None:
                status, text, user = b"200", b"OK", key.encode("ascii")
            else:
                self.refused += 1
                self._warn.warn("refused CURVE key %s from %s", key, address.decode(errors="replace"))
        self.sock.send_multipart([b"1.0", request_id, status, text, user, b""])

    def close(self) -> None:
        if self._pump is not None:
            self._pump.close()
        self.sock.close(linger=0)
