"""A managed MQTT connection: reconnect with backoff, bounded pipelined publishing, subscriptions restored.

``aiomqtt`` gives one connection per ``async with`` and awaits each message's PUBACK inside ``publish``; at
a few thousand messages a second that await (a task and an event per message) is the bottleneck. ``MqttLink``
keeps one bounded outbound queue of its own and a sender that hands messages to the underlying paho client
without waiting, keeping up to ``inflight`` QoS>0 messages unacknowledged at once. Acknowledgements arrive
through paho's ``on_publish`` callback (chained behind aiomqtt's). When the connection drops, every message
that was not acknowledged goes back to the front of the queue in its original order and is sent again after
the next connect, so QoS>0 messages survive a broker restart; QoS 0 messages handed to a dead socket are lost,
as QoS 0 allows. While the broker is away the queue is bounded: ``publish_nowait`` drops the oldest message
(counted in ``stats()["dropped"]``), ``await publish`` waits for room (back-pressure).

Both the daemon's bridge and the robot clients use it; it imports only ``aiomqtt`` and ``paho``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from bus.errors import BadRequest, Unavailable
from bus.states import LinkState

if TYPE_CHECKING:
    import aiomqtt
    from paho.mqtt.properties import Properties

log = logging.getLogger("enigma.mqtt")


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class MqttSettings:
    """Where and how to connect. ``url`` is ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://…`` (TLS)."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # CA bundle for mqtts:// (system trust store when None)
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    tls_insecure: bool = False  # skip hostname verification (self-signed LAN brokers)
    keepalive: int = 30
    queue_limit: int = 10_000  # messages waiting while the broker is away or slow
    inflight: int = 256  # QoS>0 messages sent but not yet acknowledged
    backoff_min: float = 0.1
    backoff_max: float = 10.0
    connect_timeout: float = 10.0
    will: Will | None = None
    # Seconds the broker keeps this client's session (subscriptions, queued QoS>0 messages) after a disconnect;
    # 0 starts clean on every connect.
    session_expiry: int = 0
    # Subscriptions (filter, qos) made on every connect, so a broker restart restores them.
    subscriptions: list[tuple[str, int]] = field(default_factory=list)

    def endpoint(self) -> tuple[str, int, bool, str | None, str | None]:
        """(host, port, tls, username, password) from the URL, explicit fields taking precedence."""
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise BadRequest(f"MQTT broker URL must start with mqtt:// or mqtts://, got {self.url!r}")
        tls = parts.scheme in ("mqtts", "ssl")
        if not parts.hostname:
            raise BadRequest(f"MQTT broker URL has no host: {self.url!r}")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise BadRequest(f"MQTT broker URL has a bad port: {self.url!r}") from exc
        user = self.username if self.username is not None else (unquote(parts.username) if parts.username else None)
        pwd = self.password if self.password is not None else (unquote(parts.password) if parts.password else None)
        return parts.hostname, port, tls, user, pwd

    def tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.sslsocket_class = _ClosingSSLSocket
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho-mqtt 2.2 never closes a socket whose TLS handshake failed (bad certificate): close it ourselves."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


@dataclass(slots=True)
class _Out:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None


MessageHandler = Callable[["aiomqtt.Message"], None]
ConnectHook = Callable[[], None]


def reply_address(message: aiomqtt.Message) -> tuple[str | None, bytes | None]:
    """A received request's MQTT 5 ``ResponseTopic`` and ``CorrelationData``, each ``None`` when absent."""
    props = message.properties
    if props is None:
        return None, None
    return getattr(props, "ResponseTopic", None), getattr(props, "CorrelationData", None)


def publish_properties(correlation: bytes | None, response_topic: str | None = None) -> Properties | None:
    """MQTT 5 properties carrying a response topic and/or correlation data; ``None`` when there is neither."""
    if correlation is None and response_topic is None:
        return None
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    return props


class MqttLink:
    """One logical MQTT connection that outlives broker restarts. Use ``start()``/``close()`` or ``async with``.

    ``on_message`` runs on the event loop for every message on a subscribed topic and must not block (spawn a
    task for slow work). ``on_connect`` runs after each successful connect and resubscribe, before queued
    messages are sent: the place to publish a retained ``online`` status.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        on_message: MessageHandler | None = None,
        on_connect: ConnectHook | None = None,
    ) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_connect = on_connect
        self._seq = itertools.count()
        self._queue: deque[_Out] = deque()
        self._inflight: dict[int, _Out] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self.state = LinkState.CLOSED
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._paho: Any = None
        self._stats = {"sent": 0, "acked": 0, "resent": 0, "dropped": 0, "received": 0, "connects": 0, "errors": 0}
        self.last_error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; returns at once (``connected`` is set once the broker answers)."""
        if self._task is not None:
            return
        self.settings.endpoint()  # fail fast on a malformed URL
        self._closing.clear()
        self.state = LinkState.CONNECTING
        self._task = asyncio.create_task(self._run(), name=f"mqtt-link-{self.settings.client_id}")

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - turns into Unavailable
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            host, port, *_ = self.settings.endpoint()
            detail = f": {self.last_error}" if self.last_error else ""
            raise Unavailable(f"no MQTT broker answered at {host}:{port} within {timeout:g}s{detail}") from None

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - returns False rather than raising
        """Wait until every queued message has been sent and acknowledged; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - shared by flush and disconnect
        """Flush what can be flushed within ``timeout``, disconnect cleanly (no last will), stop."""
        if self._task is None:
            return
        if self.connected.is_set():
            await self.drain(timeout)
        self.state = LinkState.CLOSING
        self._closing.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self.state = LinkState.CLOSED

    async def __aenter__(self) -> MqttLink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- publishing -------------------------------------------------------------------------------------------
    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Queue a message; when the queue is full the oldest queued message is dropped (and counted)."""
        if len(self._queue) >= self.settings.queue_limit:
            self._queue.popleft()
            self._stats["dropped"] += 1
        self._queue.append(_Out(next(self._seq), topic, payload, qos, retain, properties))
        self._idle.clear()
        self._wake.set()
        if len(self._queue) >= self.settings.queue_limit:
            self._room.clear()

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Queue a message, waiting while the queue is full (back-pressure for streams)."""
        while len(self._queue) >= self.settings.queue_limit:
            self._room.clear()
            await self._room.wait()
        self.publish_nowait(topic, payload, qos, retain, properties)

    def stats(self) -> dict[str, Any]:
        return {**self._stats, "queued": len(self._queue), "inflight": len(self._inflight), "state": str(self.state)}

    # -- the connection loop ----------------------------------------------------------------------------------
    def _make_client(self) -> aiomqtt.Client:
        import aiomqtt

        s = self.settings
        host, port, tls, user, pwd = s.endpoint()
        will = None
        if s.will is not None:
            will = aiomqtt.Will(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        properties = None
        if s.session_expiry > 0:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = s.session_expiry
        client = aiomqtt.Client(
            host,
            port,
            username=user,
            password=pwd,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=will,
            keepalive=s.keepalive,
            timeout=s.connect_timeout,
            tls_context=s.tls_context() if tls else None,
            tls_insecure=s.tls_insecure if tls else None,
            max_inflight_messages=max(s.inflight, 1),
            clean_start=s.session_expiry == 0,
            properties=properties,
        )
        # Hooks on the paho client under aiomqtt, installed before connecting: a resumed session's messages
        # arrive right after CONNACK.
        paho: Any = client._client
        chained: Any = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
            chained(c, userdata, mid, reason, props)
            self._acked(mid)

        # PUBACKs are counted here, not by awaiting aiomqtt's publish: the only way to keep many in flight.
        paho.on_publish = on_publish
        # Messages are handled inside paho's callback rather than from aiomqtt's queue: paho sends the PUBACK
        # right after this callback returns, and aiomqtt drops what is still queued when the connection dies,
        # so a message acknowledged to the broker but not yet taken from that queue would be lost for good.
        paho.on_message = self._deliver
        return client

    async def _run(self) -> None:
        import aiomqtt

        backoff = self.settings.backoff_min
        while not self._closing.is_set():
            self.state = LinkState.CONNECTING
            client: aiomqtt.Client | None = None
            try:
                client = self._make_client()
                async with client:
                    await self._serve(client)
                backoff = self.settings.backoff_min
            except aiomqtt.MqttError as exc:
                self.last_error = str(exc)
                self._stats["errors"] += 1
                log.warning("MQTT link %s: %s; retrying in %.1fs", self.settings.client_id, exc, backoff)
            finally:
                self._lost()
                if client is not None:
                    # aiomqtt leaves the socket open when the broker refuses the CONNECT (bad password)
                    with contextlib.suppress(Exception):
                        client._client._sock_close()
            if self._closing.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), backoff)
            backoff = min(backoff * 2, self.settings.backoff_max)

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._client = client
        paho: Any = client._client
        self._paho = paho
        for flt, qos in self.settings.subscriptions:
            await client.subscribe(flt, qos)
        self._stats["connects"] += 1
        self.last_error = None
        self.state = LinkState.CONNECTED
        self.disconnected.clear()
        self.connected.set()
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception:
                log.exception("MQTT on_connect hook failed")
        reader = asyncio.create_task(self._read(client))
        sender = asyncio.create_task(self._send(paho))
        closing = asyncio.create_task(self._closing.wait())
        try:
            done, _ = await asyncio.wait({reader, sender, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (reader, sender, closing):
                t.cancel()
            for t in (reader, sender, closing):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        for t in (reader, sender):
            exc = t.exception() if t in done else None
            if exc is not None:
                raise exc

    async def _read(self, client: aiomqtt.Client) -> None:
        """Ends (with ``MqttError``) when the connection drops; messages arrive through ``_deliver``."""
        async for _ in client.messages:
            pass

    def _deliver(self, _client: Any, _userdata: Any, msg: Any) -> None:
        import aiomqtt

        self._stats["received"] += 1
        if self._on_message is None:
            return
        message = aiomqtt.Message(
            msg.topic, msg.payload, msg.qos, msg.retain, msg.mid, getattr(msg, "properties", None)
        )
        try:
            self._on_message(message)
        except Exception:
            log.exception("MQTT message handler failed for %s", msg.topic)

    async def _send(self, paho: Any) -> None:
        import aiomqtt
        import paho.mqtt.client as mqtt

        window = max(self.settings.inflight, 1)
        while True:
            while self._queue and len(self._inflight) < window:
                out = self._queue.popleft()
                info = paho.publish(out.topic, out.payload, out.qos, out.retain, out.properties)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self._queue.appendleft(out)
                    raise aiomqtt.MqttError(f"publish failed: {mqtt.error_string(info.rc)}")
                self._stats["sent"] += 1
                if out.qos > 0:
                    self._inflight[info.mid] = out
            if len(self._queue) < self.settings.queue_limit:
                self._room.set()
            if not self._queue and not self._inflight:
                self._idle.set()
            self._wake.clear()
            await self._wake.wait()

    def _acked(self, mid: int) -> None:
        if self._inflight.pop(mid, None) is not None:
            self._stats["acked"] += 1
            self._wake.set()
            if not self._queue and not self._inflight:
                self._idle.set()

    def _lost(self) -> None:
        """The connection is gone: unacknowledged messages go back to the front of the queue, in order."""
        self.connected.clear()
        self.disconnected.set()
        self._client = None
        if self._paho is not None:
            self._paho = None
        if self._inflight:
            again = sorted(self._inflight.values(), key=lambda o: o.seq)
            self._inflight.clear()
            self._stats["resent"] += len(again)
            self._queue.extendleft(reversed(again))
        if not self._closing.is_set():
            self.state = LinkState.CONNECTING
