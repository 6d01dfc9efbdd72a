"""JSON over HTTP for APIs that stream NDJSON (Ollama's), on ``httpx``, with failures as bus errors.

What this adds to httpx: the answer read as JSON objects one line at a time with a bound on a line's length,
and every way a call fails (no connection, no answer in time, an HTTP error status, a connection that breaks
mid-stream, a line that is not JSON or carries ``error``) turned into the bus error a client should get. Each
stream has its own connection: closing it (leaving the ``async with``, or cancelling the task inside it) is how
a streaming generation is cancelled, because the server stops generating when the connection drops.

Timeouts: connecting and the response's head are bounded by ``timeout``; the body is not, as a generation may
pause longer than that between tokens, and cancelling is how a caller stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from bus.errors import BadRequest, BusError, InternalError, NotFound, Unavailable

MAX_LINE: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server's base URL, checked when a module is configured rather than at the first request."""

    url: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest(f"unsupported URL {url!r}: expected http://host:port")
        return cls(url.rstrip("/"))


def _http_error(status: int, payload: bytes, what: str) -> BusError:
    message = payload.decode("utf-8", "replace").strip()
    with contextlib.suppress(ValueError, AttributeError):
        message = str(json.loads(message).get("error", message))
    text = f"{what}: HTTP {status}: {message[:500]}"
    if status == 404:
        return NotFound(text)
    if 400 <= status < 500:
        return BadRequest(text)
    return Unavailable(text) if status in (502, 503, 504) else InternalError(text)


class JsonStream:
    """One request whose response body is read as JSON lines; leaving the ``async with`` drops the connection."""

    def __init__(self, endpoint: Endpoint, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> None:
        self.method = method
        self.path = path
        self.url = endpoint.url + path
        self.body = body
        self.timeout = timeout
        self.what = f"{method} {self.url}"
        self._stack = contextlib.AsyncExitStack()
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> JsonStream:
        # trust_env=False: a proxy configured for the user's web traffic must not sit between us and a local server.
        client = await self._stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, read=None), trust_env=False)
        )
        request = client.build_request(
            self.method, self.url, json=self.body, headers={"Accept": "application/x-ndjson"}
        )
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    response = await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise Unavailable(f"cannot reach {self.what}: {exc or type(exc).__name__}") from exc
            except (httpx.TransportError, TimeoutError) as exc:
                raise Unavailable(f"{self.what}: no valid answer ({exc or type(exc).__name__})") from exc
            self._stack.push_async_callback(response.aclose)
            if response.status_code != 200:
                data = await self._read_error_body(response)
                raise _http_error(response.status_code, data, self.what)
        except BaseException:
            await self._stack.aclose()
            raise
        self._response = response
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._response = None
        await self._stack.aclose()

    async def _read_error_body(self, response: httpx.Response) -> bytes:
        try:
            async with asyncio.timeout(self.timeout):
                return await response.aread()
        except (httpx.TransportError, TimeoutError):
            return b""

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object of the body, as soon as its line is complete."""
        assert self._response is not None, "lines() is read inside `async with JsonStream(...)`"
        buf = b""
        try:
            async for part in self._response.aiter_bytes():
                buf += part
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield self._decode(line)
                if len(buf) > MAX_LINE:
                    raise InternalError(f"a response line exceeds {MAX_LINE} bytes")
        except httpx.TransportError as exc:
            raise Unavailable(f"{self.what}: connection broke mid-response ({exc or type(exc).__name__})") from exc
        if buf.strip():
            yield self._decode(buf)

    def _decode(self, line: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise InternalError(f"{self.path}: response line is not JSON: {line[:120]!r}") from exc
        if not isinstance(obj, dict):
            raise InternalError(f"{self.path}: response line is not an object: {line[:120]!r}")
        if "error" in obj:
            raise InternalError(f"{self.path}: server error: {obj['error']}")
        return obj


async def request_json(
    endpoint: Endpoint, method: str, path: str, body: dict[str, Any] | None, limit_s: float
) -> dict[str, Any]:
    """A non-streaming call: the first (and only) JSON object of the answer (``limit_s`` bounds each wait)."""
    async with JsonStream(endpoint, method, path, body, limit_s) as stream:
        async for obj in stream.lines():
            return obj
    raise InternalError(f"{method} {path}: empty response")
