"""Fast paths shared by the ZeroMQ server and client: envelope packing, cheap ids, socket options.

``bus.envelope`` is the reference codec (and the only decoder). On the hot path the transports build the
envelope map with its ``*_map`` functions and pack it with a reused ``msgpack.Packer``; the bytes are the same
as ``envelope.encode`` would produce, without a dataclass and an ``os.urandom`` call per message.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any, Final

import msgpack

from bus.envelope import MAX_FRAME, MAX_NAME
from bus.errors import BadRequest, TooLarge

# ZMQ_MAXMSGSIZE: a frame above this makes libzmq drop the connection. Frames between MAX_FRAME and this still
# arrive and are answered with ``too_large``, so an honest client that overshoots learns why.
MAX_MSG_SIZE: Final = MAX_FRAME + 1024 * 1024


class LogLimiter:
    """Logs a repeated warning at most once per ``every`` seconds, with the count of the ones it swallowed.

    A hostile or misconfigured peer can repeat the same mistake thousands of times a second; the log should
    say so once in a while, not drown. (2000 frames that each logged a traceback once added 882 KB to a log.)
    """

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self._last = -every
        self._suppressed = 0

    def warn(self, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``msg`` (with the current exception's trace when ``exc_info``) unless one was logged lately."""
        now = time.monotonic()
        if now - self._last < self.every:
            self._suppressed += 1
            return
        extra = f" ({self._suppressed} similar suppressed)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        self.logger.warning(msg + extra, *args, exc_info=exc_info)


class IdMaker:
    """Ids unique per sender: a random prefix per process and object plus a counter, in hex."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._count = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):x}"


class Packer:
    """Packs envelope maps with the codec's settings and the codec's frame limit."""

    __slots__ = ("_packer",)

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)

    def pack(self, m: dict[str, Any]) -> bytes:
        try:
            data: bytes = self._packer.pack(m)
        except (TypeError, ValueError, OverflowError) as exc:
            self._packer = msgpack.Packer(use_bin_type=True)  # never reuse a packer an error left half-written
            raise BadRequest(f"body is not serialisable: {exc}") from exc
        if len(data) > MAX_FRAME:
            raise TooLarge(f"frame of {len(data)} bytes exceeds the limit of {MAX_FRAME}")
        return data


def salvage_id_streaming(frame: bytes) -> str | None:
    """Read the ``id`` of a map without decoding its (possibly huge) values; None when there is none.

    Used for frames too large for ``bus.envelope.decode`` so the sender still gets a ``too_large`` answer.
    """
    try:
        up = msgpack.Unpacker(raw=False, max_buffer_size=len(frame) + 1, max_map_len=64, max_ext_len=0)
        up.feed(frame)
        for _ in range(min(up.read_map_header(), 64)):
            key = up.unpack()
            if key == "id":
                value = up.unpack()
                return value if isinstance(value, str) and 0 < len(value) <= MAX_NAME else None
            up.skip()
    except Exception:  # hostile input: any failure means "no id"
        return None
    return None


def set_heartbeat(sock: Any, interval: float) -> None:
    """ZMTP heartbeats: ping every ``interval``, drop the peer after 3 silent intervals, tell it the same."""
    import zmq

    ivl = max(100, int(interval * 1000))
    sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(6_553_500, (3 * ivl) // 100 * 100))


class Pump:
    """Drives a plain (non-asyncio) ZeroMQ socket from the event loop, without a Future per message.

    The loop watches the socket's notification FD; when it fires, up to ``budget`` messages are received
    with NOBLOCK and handed to ``on_message`` (synchronously, so it must only decode and schedule). A send on
    the socket can consume the FD's signal, so the owner calls ``kick()`` after sending; it schedules one more
    drain. This is the pattern libzmq documents for ``ZMQ_FD``, and it is several times cheaper than
    ``zmq.asyncio`` on a busy socket.

    ``on_message`` is expected never to raise; if it does, the message is counted in ``failures`` and the
    trace logged at most once per ten seconds, so a peer that found a bug cannot flood the log with it.
    """

    def __init__(
        self,
        sock: Any,
        on_message: Any,
        *,
        copy: bool = True,
        budget: int = 256,
        name: str = "socket",
    ) -> None:
        import asyncio

        self.sock = sock
        self._on_message = on_message
        self._copy = copy
        self._budget = budget
        self._name = name
        self._loop = asyncio.get_running_loop()
        self.failures = 0
        self._warn = LogLimiter(logging.getLogger("enigma.bus"))
        self._scheduled = False
        self._closed = False
        self._fd = sock.FD
        self._loop.add_reader(self._fd, self._drain)
        self.kick()  # messages may have arrived before we watched the FD

    def kick(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        import zmq

        self._scheduled = False
        if self._closed:
            return
        sock, on_message, copy = self.sock, self._on_message, self._copy
        for _ in range(self._budget):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            except zmq.ZMQError:  # the socket is closing
                return
            try:
                on_message(frames)
            except Exception:
                self.failures += 1
                self._warn.warn("failed to handle a message on %s", self._name, exc_info=True)
        self.kick()  # budget used up: continue after the loop has run everything else once

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.remove_reader(self._fd)
