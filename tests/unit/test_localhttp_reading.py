"""How the local API's server reads a connection: requests pipelined in one read are
parsed only while MAX_PIPELINED wait for their answers (the rest kept unparsed and read
on as they are answered), and a protocol upgrade is refused without its handler running.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.localapi import _listening_socket
from edge.localhttp import HttpServer, Request, Response, Routes, get, json_response, post
from edge.localhttp.connection import MAX_PIPELINED

DEADLINE_S = 60.0


class Recorder:
    """Handlers that note what they were asked, and how many requests waited meanwhile."""

    def __init__(self) -> None:
        self.server: HttpServer | None = None
        self.stored: list[bytes] = []
        self.most_waiting = 0

    async def status(self, request: Request) -> Response:
        assert self.server is not None
        for connection in self.server._connections:
            self.most_waiting = max(self.most_waiting, len(connection._pending))
        return json_response({"ok": True})

    async def store(self, request: Request) -> Response:
        self.stored.append(request.body)
        return json_response({"stored": True}, status=201)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Recorder, Path]]:
    recorder = Recorder()
    server = HttpServer(
        Routes([get("/v1/status", recorder.status), post("/v1/records/results", recorder.store)]),
        max_body=1024,
    )
    recorder.server = server
    socket = tmp_path / "api.sock"
    await server.serve_socket(_listening_socket(socket))
    try:
        yield recorder, socket
    finally:
        await server.close()


async def test_requests_pipelined_in_one_read_wait_in_bounded_numbers_and_all_are_answered(
    served: tuple[Recorder, Path],
) -> None:
    """Before: a whole read (up to 256 KiB) was parsed before the bound was looked at:
    thousands of small requests held per connection (~2.9 MiB each, 256 connections)."""
    recorder, socket = served
    one = b"GET /v1/status HTTP/1.1\r\n\r\n"  # 27 bytes
    count = 100_000 // len(one)
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(one * count)  # read by the server in reads of many requests each
    mark, answered, tail = b"HTTP/1.1 200 OK\r\n", 0, b""
    async with asyncio.timeout(DEADLINE_S):
        while answered < count:
            got = tail + await reader.read(1 << 16)
            assert got != tail, "the connection closed"
            answered += got.count(mark)
            tail = got[-(len(mark) - 1) :]  # too short to hold a whole mark counted again
    writer.close()
    assert answered == count
    # The handler runs for the oldest waiting request: the rest were waiting behind it.
    assert 0 < recorder.most_waiting <= MAX_PIPELINED


async def test_a_protocol_upgrade_is_refused_once_and_its_handler_never_runs(
    served: tuple[Recorder, Path],
) -> None:
    """Before: llhttp completed the request before it stopped at the upgrade, so the
    record was stored and answered 201, and then the 400 was sent as well."""
    recorder, socket = served
    body = b'{"records":[{"a":1}]}'
    upgrade = (
        b"POST /v1/records/results HTTP/1.1\r\nHost: agent\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    for raw in (upgrade, connect):
        reader, writer = await asyncio.open_unix_connection(str(socket))
        writer.write(raw)
        async with asyncio.timeout(DEADLINE_S):
            data = await reader.read()  # until the server closes
        writer.close()
        assert data.count(b"HTTP/1.1 ") == 1, data
        assert data.startswith(b"HTTP/1.1 400 "), data
        assert b"protocol upgrades are not served here" in data
    assert recorder.stored == []

    # An ordinary request after an ordinary one on the same connection: still served.
    reader, writer = await asyncio.open_unix_connection(str(socket))
    plain = upgrade.replace(b"Connection: Upgrade\r\nUpgrade: websocket\r\n", b"")
    writer.write(plain + plain)
    async with asyncio.timeout(DEADLINE_S):
        while len(recorder.stored) < 2:
            await asyncio.sleep(0.01)  # a poll with a deadline
    writer.close()
    assert recorder.stored == [body, body]
