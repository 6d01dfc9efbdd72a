"""Finding daemons on the LAN: DNS-SD over mDNS (``_enigma._tcp`` via ``zeroconf``), and UDP broadcast where a
network drops multicast.

A ``Record`` is what a daemon says about itself: node id, version, endpoints, its public key and fingerprint,
and its capabilities (models loaded, free memory, accelerators, robots, load). Discovery only *finds*: nothing
found is trusted until it is paired (``bus.pairing``).

Every announcer and browser is pinned to the interface addresses it is given — zeroconf would otherwise bind
every interface and send multicast onto every network the machine is on. An empty list is refused. Whether a
daemon announces at all (not while it listens on loopback only) is the daemon's decision, not this module's.
``zeroconf`` is imported lazily (the ``lan`` extra), so a thin client that never discovers does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from bus.errors import BadRequest, Unavailable

log = logging.getLogger("enigma.bus.discovery")

SERVICE_TYPE: Final = "_enigma._tcp.local."
BROADCAST_PORT: Final = 7709
BROADCAST_MAGIC: Final = "enigma-discovery-1"
_TXT_MAX: Final = 255
_MEM_STEP: Final = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Record:
    node_id: str
    version: str = ""
    rpc: str = ""
    events: str = ""
    key: str = ""  # Z85 public key; empty for a daemon without CURVE
    fingerprint: str = ""
    caps: dict[str, Any] = field(default_factory=dict)  # models, free_memory, accelerators, robots, load
    address: str = ""  # where it was seen (filled in by the finder)
    via: str = ""  # "mdns" | "broadcast"
    seen: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- DNS-SD TXT: every value at most 255 bytes ------------------------------------------------------
    def to_txt(self) -> dict[str, str]:
        caps = self.caps
        txt = {
            "id": self.node_id,
            "ver": self.version,
            "rpc": self.rpc,
            "ev": self.events,
            "key": self.key,
            "fp": self.fingerprint,
            "models": ",".join(str(m) for m in caps.get("models", [])),
            # Rounded down to 256 MiB so that the record (and the mDNS traffic) changes with real news only.
            "mem": str(int(caps.get("free_memory") or 0) // _MEM_STEP * _MEM_STEP),
            "accel": ",".join(str(a) for a in caps.get("accelerators", [])),
            "robots": ",".join(str(r) for r in caps.get("robots", [])),
            "load": str(int(caps.get("load") or 0)),
        }
        return {k: _clip(v) for k, v in txt.items()}

    @classmethod
    def from_txt(cls, props: Mapping[bytes, bytes | None] | Mapping[str, str], address: str = "") -> Record:
        p = {_s(k): _s(v) for k, v in props.items()}  # zeroconf gives bytes; tests may give str
        if not p.get("id"):
            raise BadRequest("discovery record without a node id")
        caps = {
            "models": _list(p.get("models", "")),
            "free_memory": _int(p.get("mem", "0")),
            "accelerators": _list(p.get("accel", "")),
            "robots": _list(p.get("robots", "")),
            "load": _int(p.get("load", "0")),
        }
        return cls(
            node_id=p["id"],
            version=p.get("ver", ""),
            rpc=p.get("rpc", ""),
            events=p.get("ev", ""),
            key=p.get("key", ""),
            fingerprint=p.get("fp", ""),
            caps=caps,
            address=address,
            via="mdns",
            seen=time.time(),
        )


def _s(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _clip(v: str) -> str:
    b = v.encode("utf-8")
    return v if len(b) <= _TXT_MAX else b[:_TXT_MAX].decode("utf-8", "ignore")


def _list(v: str) -> list[str]:
    return [x for x in v.split(",") if x]


def _int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        return 0


def _check_interfaces(interfaces: list[str]) -> list[str]:
    if not interfaces:
        raise BadRequest("discovery needs the interface addresses to use; it never binds every interface")
    for addr in interfaces:
        try:
            socket.inet_aton(addr)
        except OSError:
            raise BadRequest(f"discovery interface {addr!r} is not an IPv4 address") from None
    return list(interfaces)


def _instance(node_id: str) -> str:
    return f"{node_id}.{SERVICE_TYPE}"


# -- mDNS / DNS-SD ---------------------------------------------------------------------------------------------
class Announcer:
    """Registers one ``_enigma._tcp`` service on ``interfaces`` only; ``update`` re-announces new capabilities."""

    def __init__(self, record: Record, interfaces: list[str], port: int) -> None:
        self.record = record
        self.interfaces = _check_interfaces(interfaces)
        self.port = port
        self._zc: Any = None
        self._info: Any = None

    def _service_info(self, record: Record) -> Any:
        from zeroconf.asyncio import AsyncServiceInfo

        return AsyncServiceInfo(
            SERVICE_TYPE,
            _instance(record.node_id),
            addresses=[socket.inet_aton(a) for a in self.interfaces],
            port=self.port,
            properties=record.to_txt(),
            server=f"{record.node_id}.local.",
        )

    async def start(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncZeroconf

        self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._info = self._service_info(self.record)
        try:
            # The call returns once the name is claimed; the task it returns sends the announcements.
            await (await self._zc.async_register_service(self._info, allow_name_change=False))
        except Exception as exc:
            await self._zc.async_close()
            self._zc = None
            raise Unavailable(f"cannot announce on {', '.join(self.interfaces)}: {exc}") from exc
        log.info("announcing %s on %s", self.record.node_id, ", ".join(self.interfaces))

    async def update(self, record: Record) -> None:
        if self._zc is None or record.to_txt() == self.record.to_txt():
            self.record = record
            return
        self.record = record
        self._info = self._service_info(record)
        await (await self._zc.async_update_service(self._info))

    async def close(self) -> None:
        zc, self._zc = self._zc, None
        if zc is None:
            return
        with contextlib.suppress(Exception):  # a goodbye that cannot be sent must not block shutdown
            async with asyncio.timeout(3.0):
                await (await zc.async_unregister_service(self._info))  # the goodbye goes out before we close
        await zc.async_close()


class _Heard:
    """What ``Browser`` and ``BroadcastBeacon`` share: the records heard, a listener, and waiting on a change."""

    def __init__(self, on_change: Callable[[Record, bool], None] | None) -> None:
        self.records: dict[str, Record] = {}
        self._on_change = on_change
        self._changed = asyncio.Event()

    def _notify(self, rec: Record, present: bool) -> None:
        self._changed.set()
        if self._on_change is not None:
            try:
                self._on_change(rec, present)
            except Exception:
                log.exception("discovery listener failed for %s", rec.node_id)

    async def wait_for(self, predicate: Callable[[dict[str, Record]], bool], timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``predicate(records)`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate(self.records):
                self._changed.clear()
                await self._changed.wait()


class Browser(_Heard):
    """Watches ``_enigma._tcp`` on ``interfaces``; ``records`` holds what is currently announced.

    ``on_change(record, present)`` is called on the loop for every record that appears, changes or leaves.
    """

    def __init__(self, interfaces: list[str], on_change: Callable[[Record, bool], None] | None = None) -> None:
        super().__init__(on_change)
        self.interfaces = _check_interfaces(interfaces)
        self._zc: Any = None
        self._browser: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_service])

    def _on_service(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            for node_id, rec in list(self.records.items()):
                if _instance(node_id) == name:
                    del self.records[node_id]
                    self._notify(rec, False)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if self._zc is None or not await info.async_request(self._zc.zeroconf, 3000):
            return
        addrs = info.parsed_addresses()
        try:
            rec = Record.from_txt(info.properties, addrs[0] if addrs else "")
        except BadRequest as exc:
            log.debug("ignoring %s: %s", name, exc.message)
            return
        self.records[rec.node_id] = rec
        self._notify(rec, True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            await self._zc.async_close()
            self._zc = None


async def browse(interfaces: list[str], duration: float = 3.0) -> list[Record]:
    """Everything announced on ``interfaces`` within ``duration`` seconds (what ``enigma discover`` shows)."""
    b = Browser(interfaces)
    await b.start()
    try:
        with contextlib.suppress(TimeoutError):
            await b.wait_for(lambda _records: False, duration)
        return sorted(b.records.values(), key=lambda r: r.node_id)
    finally:
        await b.close()


# -- UDP broadcast fallback ------------------------------------------------------------------------------------
def _encode_record(rec: Record) -> bytes:
    d = rec.to_dict()
    for k in ("address", "via", "seen"):
        d.pop(k)
    return json.dumps({"magic": BROADCAST_MAGIC, "record": d}, separators=(",", ":")).encode("utf-8")


def _decode_record(data: bytes, address: str) -> Record | None:
    try:
        msg = json.loads(data)
        if not isinstance(msg, dict) or msg.get("magic") != BROADCAST_MAGIC or not isinstance(msg.get("record"), dict):
            return None
        r = msg["record"]
        if not isinstance(r.get("node_id"), str) or not r["node_id"]:
            return None
        caps = r.get("caps") if isinstance(r.get("caps"), dict) else {}
        fields = {k: str(r.get(k) or "") for k in ("version", "rpc", "events", "key", "fingerprint")}
        return Record(node_id=r["node_id"], caps=caps, address=address, via="broadcast", seen=time.time(), **fields)
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, on_record: Callable[[Record], None]) -> None:
        self.on_record = on_record

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        rec = _decode_record(data[:65507], str(addr[0]))
        if rec is not None:
            self.on_record(rec)


class BroadcastBeacon(_Heard):
    """Sends the record to ``broadcast`` (an IPv4 broadcast address) from ``interface`` every ``interval``
    seconds, and collects other daemons' beacons heard on that broadcast address in ``records``.

    For networks that drop multicast. Both sockets are pinned: the sender binds the interface address, the
    receiver binds the broadcast address, so nothing goes out on or is read from any other network.
    """

    def __init__(
        self,
        record: Record | None,
        interface: str,
        broadcast: str,
        *,
        port: int = BROADCAST_PORT,
        interval: float = 5.0,
        on_change: Callable[[Record, bool], None] | None = None,
    ) -> None:
        _check_interfaces([interface, broadcast])
        super().__init__(on_change)
        self.record = record
        self.interface = interface
        self.broadcast = broadcast
        self.port = port
        self.interval = interval
        self._send: Any = None
        self._recv: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        rsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(AttributeError, OSError):
            rsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        rsock.bind((self.broadcast, self.port))
        self._recv, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self._heard), sock=rsock)
        if self.record is not None:
            ssock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            ssock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            ssock.bind((self.interface, 0))
            self._send, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=ssock)
            self._task = loop.create_task(self._beacon(), name="discovery-beacon")

    def _heard(self, rec: Record) -> None:
        if self.record is not None and rec.node_id == self.record.node_id:
            return
        self.records[rec.node_id] = rec
        self._notify(rec, True)

    async def _beacon(self) -> None:
        while True:
            if self.record is not None and self._send is not None:
                self._send.sendto(_encode_record(self.record), (self.broadcast, self.port))
            await asyncio.sleep(self.interval)

    def update(self, record: Record) -> None:
        self.record = record

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for tr in (self._send, self._recv):
            if tr is not None:
                tr.close()
        self._send = self._recv = None
