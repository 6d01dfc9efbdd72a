"""CURVE admission: pyzmq's asyncio ZAP authenticator, asking the allow-list about every client key.

libzmq asks a ZAP handler (a REP socket on ``inproc://zeromq.zap.01`` in the same context) about every CURVE
handshake. ``zmq.auth.asyncio.AsyncioAuthenticator`` speaks that protocol; we give it a CURVE callback that
admits a key when it is on the allow-list. pyzmq then answers with the key itself (Z85) as the ZAP user id, so
every message from that connection carries it as its ``User-Id`` property, and the server looks the key's
role up per request: a key revoked after its handshake gets ``unauthorized`` on its next call. The callback
re-reads the allow-list file when it changed, so ``enigmad keys allow|revoke`` needs no restart.

Only CURVE reaches this handler: every socket in the server's context that names the ``enigma`` ZAP domain is
a CURVE server, and a peer offering another mechanism fails the handshake before ZAP is asked.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator

from bus.auth import AllowList
from bus.errors import BusError
from bus.wire import LogLimiter

log = logging.getLogger("enigma.bus.zmq")

ZAP_DOMAIN: Final = b"enigma"


class ZapHandler(AsyncioAuthenticator):
    """Admits the allow-list's keys; counts and (rate-limited) logs the ones it refuses."""

    def __init__(self, ctx: zmq.Context[Any], allow: AllowList) -> None:
        # pyzmq logs every handshake at debug level; under our own name, so the daemon's levels apply.
        super().__init__(ctx, log=logging.getLogger("enigma.bus.zap"))
        self.allow_list = allow
        self.refused = 0
        self._warn = LogLimiter(log)
        self._address = ""
        self.configure_curve_callback(ZAP_DOMAIN.decode(), credentials_provider=self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        """Note the peer's address for the refusal warning (the CURVE callback is given only the key)."""
        self._address = msg[3].decode(errors="replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's CURVE credentials hook: is the Z85 ``key`` on the allow-list (re-read if its file changed)?

        It must not raise: an exception would end pyzmq's ZAP task, and every later handshake would wait
        for an answer forever.
        """
        try:
            z85_key = key.decode("ascii")
            self.reload()
            if self.allow_list.role_of(z85_key) is not None:
                return True
        except Exception:
            log.exception("refusing a CURVE key: the allow-list could not be consulted")
            z85_key = repr(key)
        self.refused += 1
        self._warn.warn("refused CURVE key %s from %s", z85_key, self._address)
        return False

    def reload(self) -> None:
        """Re-read the allow-list if its file changed; a broken file keeps the previous list in force."""
        try:
            self.allow_list.reload_if_changed()
        except BusError as exc:
            log.error("keeping the previous allow-list: %s", exc.message)

    def close(self) -> None:
        self.stop()
