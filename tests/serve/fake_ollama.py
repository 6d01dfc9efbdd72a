"""A local HTTP server that speaks Ollama's documented API (``/api/tags``, ``/api/chat``, ``/api/generate``).

No Ollama can run here, so the backend is tested against this: real sockets, chunked NDJSON exactly as Ollama
sends it. Replies are scripted per test (``reply_tokens``); ``hold`` makes the server stop after the first token
until released, so a test can cancel mid-stream and observe the server seeing the connection drop. ``raw``
replaces the answer to a chat or generate request with those bytes, after which the server closes the
connection (a broken or malformed answer); ``silent`` reads the request and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeOllama:
    models: list[str] = field(default_factory=lambda: ["smollm2:135m"])
    reply_tokens: list[str] = field(default_factory=lambda: ["The", " capital", " is", " Paris", "."])
    done_reason: str = "stop"
    hold: bool = False
    raw: bytes | None = None
    silent: bool = False
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    first_token_sent: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeOllama:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readuntil(b"\r\n")).decode()
            method, path, _ = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            while (line := (await reader.readuntil(b"\r\n")).decode()) != "\r\n":
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            body = json.loads(await reader.readexactly(length)) if length else None
            self.requests.append((method, path, body))
            await self._route(method, path, body, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.disconnected.set()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(
        self, method: str, path: str, body: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if method == "GET" and path == "/api/tags":
            models = [{"name": n, "model": n, "size": 1000, "digest": "0" * 64, "details": {}} for n in self.models]
            await self._send_json(writer, 200, {"models": models})
        elif method == "POST" and path in ("/api/chat", "/api/generate"):
            if body.get("model") not in self.models:
                await self._send_json(writer, 404, {"error": f"model '{body.get('model')}' not found"})
                return
            if self.silent:
                if not await reader.read(1):  # until the client gives up and closes
                    self.disconnected.set()
            elif self.raw is not None:
                writer.write(self.raw)
                await writer.drain()
            else:
                await self._stream(reader, writer, path, body)
        else:
            await self._send_json(writer, 404, {"error": "404 page not found"})

    async def _send_json(self, writer: asyncio.StreamWriter, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: dict[str, Any]
    ) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        tokens = self.reply_tokens[: body.get("options", {}).get("num_predict", len(self.reply_tokens))]
        for i, tok in enumerate(tokens):
            if path == "/api/chat":
                obj = {"model": body["model"], "message": {"role": "assistant", "content": tok}, "done": False}
            else:
                obj = {"model": body["model"], "response": tok, "done": False}
            await self._chunk(writer, obj)
            if i == 0:
                self.first_token_sent.set()
                if self.hold:
                    # Wait for release, or notice that the client went away (Ollama's cancel signal).
                    await writer.drain()
                    await self._wait_release_or_eof(reader)
        final: dict[str, Any] = {
            "model": body["model"],
            "done": True,
            "done_reason": self.done_reason,
            "prompt_eval_count": 12,
            "eval_count": len(tokens),
        }
        final["message" if path == "/api/chat" else "response"] = (
            {"role": "assistant", "content": ""} if path == "/api/chat" else ""
        )
        await self._chunk(writer, final)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _wait_release_or_eof(self, reader: asyncio.StreamReader) -> None:
        """Block until the test releases the stream, or the client closes its side (EOF on our reader)."""
        eof = asyncio.create_task(reader.read(1))
        release = asyncio.create_task(self.release.wait())
        done, pending = await asyncio.wait({eof, release}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if eof in done:
            raise ConnectionResetError("client went away")

    async def _chunk(self, writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode() + b"\n"
        writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        await writer.drain()
