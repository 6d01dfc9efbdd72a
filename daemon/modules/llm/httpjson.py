"""A small HTTP/1.1 client on asyncio streams for JSON APIs that stream NDJSON (Ollama's).

Why not urllib or an HTTP library: urllib blocks (an executor thread per stream, and cancelling one means
leaving a thread reading), and the project takes on no new heavy dependency for two endpoints. Closing the
connection is how a streaming generation is cancelled, so owning the socket is the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from bus.errors import BadRequest, BusError, InternalError, NotFound, Unavailable

MAX_LINE: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise BadRequest(f"unsupported URL {url!r}: expected http://host:port")
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"))


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
    """One request whose response body is read as JSON lines; ``close()`` drops the connection."""

    def __init__(self, endpoint: Endpoint, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> None:
        self.endpoint = endpoint
        self.method = method
        self.path = endpoint.base_path + path
        self.body = body
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> JsonStream:
        ep = self.endpoint
        what = f"{self.method} http://{ep.host}:{ep.port}{self.path}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ep.host, ep.port, limit=MAX_LINE), self.timeout
            )
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot reach {what}: {exc or type(exc).__name__}") from exc
        self._reader, self._writer = reader, writer
        payload = b"" if self.body is None else json.dumps(self.body).encode()
        head = (
            f"{self.method} {self.path} HTTP/1.1\r\nHost: {ep.host}:{ep.port}\r\nAccept: application/x-ndjson\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + payload)
        try:
            await writer.drain()
            status, headers = await asyncio.wait_for(self._read_head(), self.timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await self.close()
            raise Unavailable(f"{what}: no valid answer ({exc or type(exc).__name__})") from exc
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._length = int(headers["content-length"]) if "content-length" in headers else None
        if status != 200:
            data = b"".join([part async for part in self._body_parts()])
            await self.close()
            raise _http_error(status, data, what)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        assert self._reader is not None
        status_line = (await self._reader.readuntil(b"\r\n")).decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise OSError(f"bad status line {status_line!r:.80}")
        headers: dict[str, str] = {}
        while True:
            line = (await self._reader.readuntil(b"\r\n")).decode("latin-1")
            if line == "\r\n":
                return int(parts[1]), headers
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()

    async def _body_parts(self) -> AsyncIterator[bytes]:
        """The raw body in pieces, whatever the framing (chunked, length, or until EOF)."""
        reader = self._reader
        assert reader is not None
        if self._chunked:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                yield data
        elif self._length is not None:
            if self._length:
                yield await reader.readexactly(self._length)
        else:
            while data := await reader.read(65536):
                yield data

    async def lines(self) -> AsyncIterator[dict[str, Any]]:
        """Each JSON object of the body, as soon as its line is complete."""
        buf = b""
        try:
            async for part in self._body_parts():
                buf += part
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield self._decode(line)
                if len(buf) > MAX_LINE:
                    raise InternalError(f"a response line exceeds {MAX_LINE} bytes")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise Unavailable(f"{self.method} {self.path}: connection broke mid-response ({exc})") from exc
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
