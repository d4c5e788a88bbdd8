"""The local API's HTTP/1.1 server (edge/localhttp/), served on a real Unix socket and
spoken to byte by byte, as a client that is not aiohttp would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.localapi import _listening_socket
from edge.localhttp import HttpServer, Request, Response, Routes, get, json_response, post

LIMIT = 1024


class Handlers:
    """Routes whose answers say what the handler was given."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()

    async def echo(self, request: Request) -> Response:
        return json_response(
            {
                "method": request.method,
                "path": request.path,
                "params": request.params,
                "query": request.query,
                "body": request.body.decode("latin-1"),
                "type": request.content_type,
            }
        )

    async def slow(self, request: Request) -> Response:
        self.started.set()
        await self.release.wait()
        return json_response({"slow": request.params["n"]})

    async def broken(self, request: Request) -> Response:
        raise RuntimeError("a bug")

    def routes(self) -> Routes:
        return Routes(
            [
                get("/v1/status", self.echo),
                post("/v1/infer/{model}", self.echo),
                post("/v1/slow/{n}", self.slow),
                get("/v1/broken", self.broken),
                post("/v1/big", self.echo, max_body=8 * LIMIT),
            ]
        )


class Served:
    def __init__(self, server: HttpServer, socket: Path, handlers: Handlers) -> None:
        self.server, self.socket, self.handlers = server, socket, handlers

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.socket))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    handlers = Handlers()
    server = HttpServer(handlers.routes(), max_body=LIMIT, keepalive_s=1.0)
    socket = tmp_path / "api.sock"
    await server.serve_socket(_listening_socket(socket))
    try:
        yield Served(server, socket, handlers)
    finally:
        await server.close()


async def answer(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One answer off the connection: its status, headers (names in lower case), body
    (none to a HEAD)."""
    top = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status_line, *lines = top.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    size = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(size), 30) if size and not head else b""
    return int(status_line.split()[1]), headers, body


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: agent"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF within 30 s)."""
    return await asyncio.wait_for(reader.read(), 30) == b""


async def test_keep_alive_serves_requests_one_after_another_on_one_connection(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    writer.write(request("GET", "/v1/status?x=1&y=two"))
    status, headers, body = await answer(reader)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert "date" in headers
    assert "connection" not in headers
    assert json.loads(body)["query"] == {"x": "1", "y": "two"}

    writer.write(request("POST", "/v1/infer/m%20one", b'{"a":1}', Content_Type="Text/Plain; x=y"))
    status, _, body = await answer(reader)
    got = json.loads(body)
    assert (status, got["params"], got["body"], got["type"]) == (
        200,
        {"model": "m one"},
        '{"a":1}',
        "text/plain",
    )

    writer.write(request("HEAD", "/v1/status"))
    status, headers, _ = await answer(reader, head=True)
    assert status == 200
    assert int(headers["content-length"]) > 0
    writer.write(request("GET", "/v1/status"))  # the HEAD left no body on the line
    assert (await answer(reader))[0] == 200
    writer.close()


async def test_pipelined_requests_are_answered_in_the_order_they_came(served: Served) -> None:
    served.handlers.release.clear()
    reader, writer = await served.connect()
    writer.write(request("POST", "/v1/slow/1") + request("GET", "/v1/status") * 30)
    await asyncio.wait_for(served.handlers.started.wait(), 30)
    served.handlers.release.set()
    first = json.loads((await answer(reader))[2])
    assert first == {"slow": "1"}
    for _ in range(30):
        status, _, body = await answer(reader)
        assert (status, json.loads(body)["path"]) == (200, "/v1/status")
    writer.close()


async def test_a_body_over_the_limit_is_refused_and_one_within_it_served(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(request("POST", "/v1/infer/m", b"x" * LIMIT))
    assert (await answer(reader))[0] == 200

    # Sent whole before the answer is read, as most clients do: the answer still comes.
    writer.write(request("POST", "/v1/infer/m", b"x" * (LIMIT + 1)))
    status, headers, body = await answer(reader)
    assert (status, json.loads(body)["error"]["code"]) == (413, "too_large")
    assert f"limit of {LIMIT} bytes" in json.loads(body)["error"]["message"]
    assert headers["connection"] == "close"
    assert await closed(reader)

    # A route with a larger limit of its own takes the same body.
    reader, writer = await served.connect()
    writer.write(request("POST", "/v1/big", b"x" * (LIMIT + 1)))
    status, _, body = await answer(reader)
    assert (status, len(json.loads(body)["body"])) == (200, LIMIT + 1)
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body_or_refused_at_once(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    head = b"POST /v1/infer/m HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    writer.write(head)
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"hello")
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["body"]) == (200, "hello")

    big = (
        f"POST /v1/infer/m HTTP/1.1\r\nContent-Length: {LIMIT + 1}\r\nExpect: 100-continue\r\n\r\n"
    )
    writer.write(big.encode())  # and no body: the client waits to hear first
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["error"]["code"]) == (413, "too_large")
    assert await closed(reader)


async def test_a_chunked_body_is_put_together(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(
        b"POST /v1/infer/m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["body"]) == (200, "abcdefg")
    writer.close()


@pytest.mark.parametrize(
    ("sent", "status", "code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        # Ambiguous about where it ends (request smuggling): refused, not guessed at.
        (
            b"POST /v1/infer/m HTTP/1.1\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "bad_request",
        ),
        (
            b"GET /v1/status HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        # A head that never ends is refused once it is over the bound, not read on.
        (b"GET /v1/status HTTP/1.1\r\nX-Endless: " + b"a" * 40_000, 431, "headers_too_large"),
        (b"GET /v1/status HTTP/1.1\r\n" + b"X-Same: 1\r\n" * 10_000, 431, "headers_too_large"),
        (
            b"GET /v1/status HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(101))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
    ],
)
async def test_a_malformed_request_gets_a_json_error_and_the_connection_closes(
    served: Served, sent: bytes, status: int, code: str
) -> None:
    reader, writer = await served.connect()
    writer.write(sent)
    got, _, body = await answer(reader)
    assert (got, json.loads(body)["error"]["code"]) == (status, code)
    assert await closed(reader)
    # The server serves the next client as before.
    reader, writer = await served.connect()
    writer.write(request("GET", "/v1/status"))
    assert (await answer(reader))[0] == 200
    writer.close()


async def test_unknown_paths_and_methods_get_404_and_405_in_the_json_shape(
    served: Served,
) -> None:
    reader, writer = await served.connect()
    writer.write(request("GET", "/v1/nothing"))
    status, _, body = await answer(reader)
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (404, "not_found")
    assert error["message"].startswith("no such path: /v1/nothing; paths: GET /v1/broken, ")
    assert set(error) == {"code", "message", "details"}

    writer.write(request("DELETE", "/v1/status"))
    status, headers, body = await answer(reader)
    assert (status, headers["allow"], json.loads(body)["error"]["code"]) == (
        405,
        "GET, HEAD",
        "method_not_allowed",
    )
    # An encoded slash stays inside its segment: it reaches no other route.
    writer.write(request("GET", "/v1%2Fstatus"))
    assert (await answer(reader))[0] == 404
    writer.write(request("POST", "/v1/infer/a%2Fb", b""))
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["params"]) == (200, {"model": "a/b"})
    writer.write(request("POST", "/v1/infer/", b""))  # an empty segment names nothing
    assert (await answer(reader))[0] == 404
    writer.close()


async def test_a_failing_handler_answers_500_and_the_connection_goes_on(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(request("GET", "/v1/broken"))
    status, _, body = await answer(reader)
    assert (status, json.loads(body)["error"]["code"]) == (500, "internal")
    writer.write(request("GET", "/v1/status"))
    assert (await answer(reader))[0] == 200
    writer.close()


async def test_http_1_0_gets_its_answer_and_the_connection_closes(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(b"GET /v1/status HTTP/1.0\r\n\r\n")
    status, headers, _ = await answer(reader)
    assert (status, headers["connection"]) == (200, "close")
    assert await closed(reader)


async def test_an_idle_connection_or_one_stuck_mid_request_is_closed(served: Served) -> None:
    reader, writer = await served.connect()
    writer.write(request("GET", "/v1/status"))
    assert (await answer(reader))[0] == 200
    stuck_reader, stuck_writer = await served.connect()
    stuck_writer.write(b"GET /v1/status HTTP/1.1\r\nHost:")  # and nothing more
    assert await closed(reader)  # keepalive_s is 1 s here
    assert await closed(stuck_reader)


async def test_close_lets_an_answer_under_way_finish_and_stops_listening(
    served: Served,
) -> None:
    served.handlers.release.clear()
    reader, writer = await served.connect()
    writer.write(request("POST", "/v1/slow/7"))
    await asyncio.wait_for(served.handlers.started.wait(), 30)
    closing = asyncio.create_task(served.server.close())
    await asyncio.sleep(0)  # close has begun: the listener is shut
    with pytest.raises(OSError, match=r"Connection refused|No such file"):
        await served.connect()
    assert not closing.done()
    served.handlers.release.set()
    status, headers, body = await answer(reader)
    assert (status, json.loads(body), headers["connection"]) == (200, {"slow": "7"}, "close")
    await asyncio.wait_for(closing, 30)
    assert await closed(reader)


async def test_a_client_that_half_closes_gets_every_answer_it_asked_for(served: Served) -> None:
    served.handlers.release.clear()
    reader, writer = await served.connect()
    writer.write(request("POST", "/v1/slow/1") + request("GET", "/v1/status") * 2)
    await asyncio.wait_for(served.handlers.started.wait(), 30)
    writer.write_eof()  # all it will send, while its first answer is under way
    deadline = asyncio.get_running_loop().time() + 30
    while not any(c._closing for c in served.server._connections):  # it has seen the end
        assert asyncio.get_running_loop().time() < deadline, "the end never reached the server"
        await asyncio.sleep(0.01)  # a poll with a deadline
    served.handlers.release.set()
    statuses = [(await answer(reader))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert await closed(reader)
