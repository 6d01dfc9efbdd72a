"""systemd's notify protocol (sd_notify), spoken directly over the datagram socket.

The protocol is a few lines: send ``KEY=VALUE`` lines to the AF_UNIX datagram socket named by
``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Without ``NOTIFY_SOCKET`` every call is a
no-op, so the daemon behaves the same under a terminal, a container or systemd. The watchdog is fed from
a task on the event loop itself: a blocked loop stops the pings and systemd restarts the service.

Why not the ``sdnotify`` package: it reads ``NOTIFY_SOCKET`` from the process environment only (a test hands
``Notifier`` its own), blocks on a full socket, swallows every error with a bare ``except`` and reports
nothing back, and has no watchdog interval; what it would replace is the ``sendto`` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("enigma.notify")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self._addr: str | bytes | None = None
        self._sock: socket.socket | None = None
        path = env.get("NOTIFY_SOCKET", "")
        if path:
            self._addr = b"\0" + path[1:].encode() if path.startswith("@") else path
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_interval = self._watchdog_interval(env)

    @staticmethod
    def _watchdog_interval(env: dict[str, str]) -> float | None:
        """Half the watchdog timeout systemd asked for, as sd_watchdog_enabled() recommends."""
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(int(usec) / 2_000_000, 0.01)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
            return None

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased). Returns False when systemd is not listening."""
        if self._sock is None or self._addr is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(payload, self._addr)
        except OSError as exc:
            log.debug("notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def reloading(self) -> None:
        # systemd ≥ 253 wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload); older ones ignore it.
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str | None = None) -> None:
        self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    async def run_watchdog(self, healthy: Callable[[], bool] = lambda: True) -> None:
        """Ping the watchdog from the event loop until cancelled; skips pings while ``healthy()`` is false."""
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            if healthy():
                self.watchdog()
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
