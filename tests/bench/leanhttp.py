"""A lean HTTP/1.1 client over a Unix socket, for benchmarks: one keep-alive connection
that writes a request prepared once and waits for its whole answer, parsed by httptools.

Its cost per call is a few tens of µs where aiohttp's client takes hundreds: a local API
figure taken with it is mostly the server's, as a program with a lean client (or one in
C) would see it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httptools


def post(path: str, body: bytes, content_type: str) -> bytes:
    """A POST request's bytes, to send again and again."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class LeanConnection(asyncio.Protocol):
    """One connection; one call at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionError(f"the server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        if self._answer is not None and not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), body))

    async def call(self, request: bytes) -> tuple[int, bytes]:
        """Send `request`; return the answer's status and body."""
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def connect(socket: Path) -> LeanConnection:
    _, connection = await asyncio.get_running_loop().create_unix_connection(
        LeanConnection, str(socket)
    )
    return connection
