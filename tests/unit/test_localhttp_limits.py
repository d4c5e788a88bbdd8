"""What bounds a local API client's hold on the agent: a client that sends requests and
never reads its answers, trailer fields that never end, a request trickled a byte at a
time, more connections than the server keeps, and, over TCP, a request that names
another host (DNS rebinding). Each probe beside the same probe served when it should be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import edge.localhttp.server
from edge.localapi import _listening_socket
from edge.localhttp import HttpServer, Request, Response, Routes, get, json_response, post
from tests.support import free_port
from tests.unit.test_localhttp_server import answer, closed, request

DEADLINE_S = 30.0


async def _echo(request: Request) -> Response:
    return json_response({"path": request.path, "body": request.body.decode("latin-1")})


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[HttpServer, Path]]:
    served = HttpServer(
        Routes([get("/v1/status", _echo), post("/v1/infer/{model}", _echo)]),
        max_body=1024,
        keepalive_s=1.0,
    )
    socket = tmp_path / "api.sock"
    await served.serve_socket(_listening_socket(socket))
    try:
        yield served, socket
    finally:
        await served.close()


async def test_a_client_that_does_not_read_its_answers_is_read_no_further_until_it_does(
    server: tuple[HttpServer, Path],
) -> None:
    """Answers to pipelined requests used to pile up unsent, without bound, while the
    server read on; now reading pauses, and every request is answered once the client
    reads."""
    served, socket = server
    reader, writer = await asyncio.open_unix_connection(str(socket))
    chunk = request("GET", "/v1/status") * 1000
    sent = 0
    while sent < 200 * 1000:  # far past what the buffers hold
        writer.write(chunk)
        sent += 1000
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
        except TimeoutError:
            break  # the server no longer reads
    (connection,) = served._connections
    async with asyncio.timeout(DEADLINE_S):  # until it holds back, or answered all
        while not connection._backlogged and (connection._pending or connection._answering):
            await asyncio.sleep(0.01)  # a poll with a deadline
    assert connection._transport is not None
    assert connection._transport.get_write_buffer_size() < 1 << 20
    assert sent < 200 * 1000, "the client was never held back"

    mark, answered, tail = b"HTTP/1.1 200 OK\r\n", 0, b""
    async with asyncio.timeout(DEADLINE_S):
        while answered < sent:
            got = tail + await reader.read(1 << 20)
            answered += got.count(mark)
            tail = got[-(len(mark) - 1) :]  # too short to hold a whole mark counted again
    assert answered == sent
    writer.close()


async def test_trailer_fields_that_never_end_are_refused_and_whole_ones_served(
    server: tuple[HttpServer, Path],
) -> None:
    _, socket = server
    head = b"POST /v1/infer/m HTTP/1.1\r\nHost: agent\r\nTransfer-Encoding: chunked\r\n\r\n"
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(head + b"2\r\n{}\r\n0\r\nX-Trailer: ok\r\n\r\n")
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["body"]) == (200, "{}")

    writer.write(head + b"2\r\n{}\r\n0\r\nX-Endless: ")
    with contextlib.suppress(ConnectionError):
        for _ in range(16):  # 128 KiB of one field, never ended
            writer.write(b"a" * 8192)
            await writer.drain()
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["error"]["code"]) == (431, "headers_too_large")
    assert await closed(reader)


async def test_a_request_trickled_a_byte_at_a_time_is_cut_off(
    server: tuple[HttpServer, Path],
) -> None:
    """Each byte used to count as activity, so a request that never ends held its
    connection for ever; it has `keepalive_s` (1 s here) from its first byte."""
    _, socket = server
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(request("GET", "/v1/status"))
    assert (await answer(reader))[0] == 200  # the same connection served a whole one

    trickled = b"GET /v1/status HTTP/1.1\r\nX-Slow: " + b"a" * 200
    cut = False
    for byte in trickled:  # 0.1 s apart: 20 s for the whole, were it never cut
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            cut = True
            break
        await asyncio.sleep(0.1)  # the trickle itself, not a wait for the server
        if reader.at_eof():
            cut = True
            break
    assert cut, "the trickling client kept its connection"


async def test_connections_past_the_bound_are_answered_503_and_the_rest_served(
    server: tuple[HttpServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, socket = server
    monkeypatch.setattr(edge.localhttp.server, "MAX_CONNECTIONS", 2)
    first = await asyncio.open_unix_connection(str(socket))
    second = await asyncio.open_unix_connection(str(socket))
    third_reader, _ = await asyncio.open_unix_connection(str(socket))
    status, _, body = await answer(third_reader)
    assert (status, json.loads(body)["error"]["code"]) == (503, "busy")
    assert await closed(third_reader)
    for reader, writer in (first, second):
        writer.write(request("GET", "/v1/status"))
        assert (await answer(reader))[0] == 200
        writer.close()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:{port}", 200),
        ("localhost:{port}", 200),
        ("[::1]:{port}", 200),
        ("rebound.example:{port}", 421),
        ("127.0.0.1.rebound.example", 421),
    ],
)
async def test_over_tcp_only_a_loopback_host_is_answered(
    server: tuple[HttpServer, Path], host: str, status: int
) -> None:
    served, _ = server
    port = free_port()
    await served.serve_tcp("127.0.0.1", port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    named = host.format(port=port)
    writer.write(f"GET /v1/status HTTP/1.1\r\nHost: {named}\r\n\r\n".encode())
    got, _, body = await answer(reader)
    assert got == status
    if status == 421:
        assert json.loads(body)["error"]["code"] == "misdirected_request"
        assert await closed(reader)
    writer.close()


async def test_a_request_over_the_unix_socket_may_name_any_host(
    server: tuple[HttpServer, Path],
) -> None:
    """The socket's file mode guards it; clients name what they like (aiohttp's, say)."""
    _, socket = server
    reader, writer = await asyncio.open_unix_connection(str(socket))
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: rebound.example\r\n\r\n")
    assert (await answer(reader))[0] == 200
    writer.close()
