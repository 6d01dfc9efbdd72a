"""Pairing: how two daemons (or a daemon and a client) exchange CURVE public keys with the owner's approval.

Until they are paired, neither side's key is on the other's allow-list, so the daemon's CURVE socket refuses
them; pairing therefore runs on a socket of its own that exists only while the owner holds a *pairing window*
open on the accepting side (``enigma peers pair --accept``). That side shows a short one-time code; the owner
types it on the other side. The exchange, on that socket, is two requests:

1. ``pair.hello`` ``{node_id, name, key, nonce, endpoints}`` → ``{node_id, name, key, nonce, endpoints}``:
   both sides learn each other's public key and a fresh nonce.
2. ``pair.claim`` ``{proof}`` where ``proof = HMAC-SHA256(code, "claim" | key_a | key_b | nonce_a | nonce_b)``
   → ``{proof: HMAC(code, "ack" | …), role}``: the acceptor admits the key only when the proof is right, and
   proves in turn that it knows the code, so each side knows the key it now trusts is the one the owner meant.

The code never travels; each proof binds both keys and both nonces, so a relayed or replayed message is
useless. A wrong proof costs one of ``max_attempts`` tries, after which (or after ``ttl`` seconds, or after one
success) the window closes. What it does not stop: an active attacker on the LAN who intercepts the hello can
try all 10^6 codes offline against a proof and race the real device; the fingerprints both sides print
(``bus.auth.fingerprint``) are there for an owner who wants to rule that out by comparing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq
import zmq.asyncio

from bus.auth import check_key, fingerprint
from bus.envelope import DecodeError, Envelope, decode, encode
from bus.errors import BadRequest, BusError, Forbidden, InternalError, Timeout, Unavailable

log = logging.getLogger("enigma.bus.pairing")

CODE_DIGITS: Final = 6
MAX_PAIR_MSG: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Identity:
    """Who one side of a pairing is: what the other side stores about it once paired."""

    node_id: str
    key: str  # Z85 CURVE public key
    name: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)  # {"rpc", "events"} where it serves, if a daemon

    def to_body(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "key": self.key, "name": self.name, "endpoints": dict(self.endpoints)}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Identity:
        node_id, key = body.get("node_id"), body.get("key")
        if not isinstance(node_id, str) or not node_id or len(node_id) > 64:
            raise BadRequest("pairing: 'node_id' must be a string of 1-64 characters")
        check_key(key if isinstance(key, str) else "", "pairing key")
        eps = body.get("endpoints") or {}
        if not isinstance(eps, dict) or not all(isinstance(v, str) for v in eps.values()):
            raise BadRequest("pairing: 'endpoints' must map names to endpoint strings")
        name = body.get("name") or ""
        return cls(node_id, str(key), str(name)[:64], {str(k): v for k, v in eps.items()})


@dataclass(frozen=True, slots=True)
class Paired:
    """The outcome of a pairing, on either side: the other side's identity and the role it was given."""

    peer: Identity
    role: str


def new_code() -> str:
    """A fresh one-time code, shown as ``123-456``."""
    n = secrets.randbelow(10**CODE_DIGITS)
    s = f"{n:0{CODE_DIGITS}d}"
    return f"{s[:3]}-{s[3:]}"


def normalize_code(code: str) -> str:
    """Digits only, so ``123 456``, ``123-456`` and ``123456`` are the same code."""
    digits = "".join(ch for ch in code if ch.isdigit())
    if len(digits) != CODE_DIGITS:
        raise BadRequest(f"a pairing code has {CODE_DIGITS} digits, got {code!r}")
    return digits


def proof(code: str, label: str, key_a: str, key_b: str, nonce_a: str, nonce_b: str) -> str:
    """HMAC of everything the exchange must bind, keyed by the code; ``label`` separates claim from ack."""
    msg = "|".join((f"enigma-pair-{label}", key_a, key_b, nonce_a, nonce_b)).encode("ascii")
    return hmac.new(normalize_code(code).encode("ascii"), msg, hashlib.sha256).hexdigest()


def _nonce(body: dict[str, Any]) -> str:
    n = body.get("nonce")
    if not isinstance(n, str) or not 16 <= len(n) <= 128:
        raise BadRequest("pairing: 'nonce' must be a string of 16-128 characters")
    return n


OnPaired = Callable[[Paired], Awaitable[None]]


class PairingWindow:
    """The accepting side: a plain ROUTER on ``endpoint`` that admits one key with ``role``, then closes.

    ``on_paired`` runs before the acceptor acknowledges, so the key is on the allow-list by the time the other
    side hears it worked. ``result`` resolves with the ``Paired`` peer, or fails with ``Timeout`` (the window
    expired) or ``Forbidden`` (too many wrong codes).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        me: Identity,
        role: str,
        on_paired: OnPaired,
        code: str | None = None,
        ttl: float = 120.0,
        max_attempts: int = 3,
    ) -> None:
        self.endpoint = endpoint
        self.me = me
        self.role = role
        self.code = code or new_code()
        self.ttl = ttl
        self.attempts_left = max_attempts
        self.expires = time.time() + ttl
        self._on_paired = on_paired
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._hellos: dict[bytes, tuple[Identity, str, str]] = {}
        self.result: asyncio.Future[Paired] = asyncio.get_running_loop().create_future()
        self.bound = ""

    async def open(self) -> str:
        """Bind and start answering; returns the real endpoint (port 0 picks a free one)."""
        self._ctx = zmq.asyncio.Context()
        sock = self._sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_PAIR_MSG)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as exc:
            self._teardown()
            raise Unavailable(f"cannot open the pairing window on {self.endpoint}: {exc.strerror}") from exc
        self.bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="pairing-window")
        return self.bound

    @property
    def is_open(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop answering and release the socket (an answer still queued gets half a second to leave)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        ctx, self._ctx = self._ctx, None
        self._teardown()
        if ctx is not None:
            await asyncio.to_thread(ctx.term)
        if not self.result.done():
            self.result.set_exception(Timeout("the pairing window was closed"))
            self.result.exception()  # retrieved: nobody may be waiting

    def _teardown(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    async def _serve(self) -> None:
        assert self._sock is not None
        sock = self._sock
        try:
            async with asyncio.timeout(self.ttl):
                while not self.result.done():
                    frames = await sock.recv_multipart()
                    if len(frames) != 2:
                        continue
                    rid, payload = frames
                    try:
                        env = decode(payload)
                    except DecodeError:
                        continue
                    if env.kind != "request":
                        continue
                    try:
                        reply = await self._handle(rid, env)
                        out = Envelope.reply(env.id, reply)
                    except BusError as exc:
                        out = Envelope.error(env.id, exc)
                    await sock.send_multipart([rid, encode(out)])
        except TimeoutError:
            if not self.result.done():
                self.result.set_exception(Timeout(f"the pairing window expired after {self.ttl:g} s"))
                self.result.exception()
        finally:
            sock.close(linger=500)  # the final answer may still be queued: give it half a second to go out
            self._sock = None

    async def _handle(self, rid: bytes, env: Envelope) -> dict[str, Any]:
        body = env.body
        if env.method == "pair.hello":
            peer = Identity.from_body(body)
            nonce_a = _nonce(body)
            nonce_b = os.urandom(16).hex()
            if len(self._hellos) > 64:
                self._hellos.clear()  # someone is flooding us with hellos; the honest one says hello again
            self._hellos[rid] = (peer, nonce_a, nonce_b)
            return {**self.me.to_body(), "nonce": nonce_b, "fingerprint": fingerprint(self.me.key)}
        if env.method == "pair.claim":
            state = self._hellos.get(rid)
            if state is None:
                raise BadRequest("pairing: send pair.hello first")
            peer, nonce_a, nonce_b = state
            claimed = body.get("proof")
            expected = proof(self.code, "claim", peer.key, self.me.key, nonce_a, nonce_b)
            if not isinstance(claimed, str) or not hmac.compare_digest(claimed, expected):
                self.attempts_left -= 1
                self._hellos.pop(rid, None)
                if self.attempts_left <= 0:
                    err = Forbidden("wrong pairing code; too many wrong codes, the pairing window is closed")
                    if not self.result.done():
                        self.result.set_exception(Forbidden("too many wrong pairing codes"))
                        self.result.exception()
                    raise err
                raise Forbidden(f"wrong pairing code ({self.attempts_left} attempts left)")
            paired = Paired(peer, self.role)
            try:
                await self._on_paired(paired)
            except BusError:
                raise
            except Exception as exc:
                log.exception("storing the paired key failed")
                raise InternalError(f"the pairing could not be stored: {exc}") from exc
            if not self.result.done():
                self.result.set_result(paired)
            return {"proof": proof(self.code, "ack", peer.key, self.me.key, nonce_a, nonce_b), "role": self.role}
        raise BadRequest(f"pairing: unknown step {env.method!r}")


async def pair_with(endpoint: str, me: Identity, code: str, *, timeout: float = 10.0) -> Paired:  # noqa: ASYNC109
    """The typing side: run the exchange against an open window at ``endpoint``.

    Returns the acceptor's identity and the role it gave us. Raises ``Forbidden`` for a wrong code (or an
    acceptor that cannot prove it knows the code), ``Unavailable`` when nothing answers in ``timeout``.
    """
    code = normalize_code(code)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_PAIR_MSG)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        ctx.term()
        raise BadRequest(f"cannot connect to {endpoint}: {exc.strerror}") from exc

    async def ask(method: str, body: dict[str, Any]) -> dict[str, Any]:
        req = Envelope.request(method, body)
        await sock.send(encode(req))
        while True:
            env = decode(await sock.recv())
            if env.ref != req.id:
                continue
            if env.kind == "error":
                raise BusError.from_body(env.body)
            return env.body

    try:
        async with asyncio.timeout(timeout):
            nonce_a = os.urandom(16).hex()
            hello = await ask("pair.hello", {**me.to_body(), "nonce": nonce_a})
            peer = Identity.from_body(hello)
            nonce_b = _nonce(hello)
            claim = proof(code, "claim", me.key, peer.key, nonce_a, nonce_b)
            ack = await ask("pair.claim", {"proof": claim})
            expected = proof(code, "ack", me.key, peer.key, nonce_a, nonce_b)
            if not isinstance(ack.get("proof"), str) or not hmac.compare_digest(ack["proof"], expected):
                raise Forbidden("the other side could not prove it knows the pairing code: not pairing with it")
            role = ack.get("role")
            return Paired(peer, role if isinstance(role, str) else "user")
    except TimeoutError:
        raise Unavailable(f"no pairing window answered at {endpoint} within {timeout:g} s") from None
    finally:
        sock.close(linger=0)
        ctx.term()
