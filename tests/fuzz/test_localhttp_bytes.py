"""Fuzz the local API's HTTP/1.1 server (edge/localhttp/) with raw bytes: arbitrary
streams, and well-formed requests with bytes inserted, dropped or changed, sent in
chunks of any size, then a half-close.

Whatever arrives, the server answers within a time bound with whole, well-formed HTTP
answers (nothing after them), never a 5xx, every error in the JSON error shape; and it
still serves a good request afterwards, holding no connection it was given.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httptools
from hypothesis import given
from hypothesis import strategies as st

from edge.localapi import _listening_socket
from edge.localhttp import HttpServer, Request, Response, Routes, get, json_response, post
from tests.fuzz.conftest import count, on_loop

ANSWER_WITHIN_S = 20.0
LIMIT = 256

VALID = [
    b"GET /v1/status HTTP/1.1\r\nHost: agent\r\n\r\n",
    b"POST /v1/infer/m HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 7\r\n"
    b'\r\n{"a":1}',
    b"POST /v1/infer/m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /v1/status HTTP/1.0\r\n\r\n",  # (not HEAD: a parser of answers alone misreads it)
    b"POST /v1/infer/m HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Well-formed requests, some pipelined, with a few bytes inserted, dropped or changed."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.integers(0, 2))
        if what == 0:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif what == 1:
            del data[at : at + draw(st.integers(1, 8))]
        elif at < len(data):
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


STREAMS = st.one_of(
    mutated(),
    st.binary(max_size=600),
    st.just(b"POST /v1/infer/m HTTP/1.1\r\nContent-Length: 9999\r\n\r\n" + b"x" * 400),
)


@st.composite
def chunked(draw: st.DrawFn) -> list[bytes]:
    """A stream cut into the pieces the server's reads get."""
    data = draw(STREAMS)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


async def _echo(request: Request) -> Response:
    return json_response({"path": request.path, "body": len(request.body)})


async def _exchange(socket: Path, pieces: list[bytes]) -> bytes:
    """Send `pieces`, half-close, and return every byte the server sent until it closed."""
    reader, writer = await asyncio.open_unix_connection(str(socket))
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
        writer.write_eof()
        return await reader.read()
    except ConnectionResetError:
        return b""  # refused mid-send and closed: nothing more to read
    finally:
        writer.close()


class _Answers:
    """What an httptools response parser makes of the server's bytes."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.begun = 0
        self.statuses: list[int] = []
        self.bodies: list[bytes] = []
        self._body = b""

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())
        self.bodies.append(self._body)
        self._body = b""


def _check(sent: list[bytes], got: bytes) -> None:
    answers = _Answers()  # (a 100 Continue is an answer of its own, before the final one)
    answers.parser.feed_data(got)  # raises on bytes that are not HTTP answers
    assert answers.begun == len(answers.statuses), f"{sent!r}: an answer cut short: {got!r}"
    for status, body in zip(answers.statuses, answers.bodies, strict=True):
        assert status < 500, f"{sent!r}: {status} {body!r}"
        if status >= 400:
            error = json.loads(body)["error"]
            assert error["code"], body
            assert error["message"], body


async def test_the_server_answers_any_bytes_with_whole_answers_and_goes_on(
    tmp_path: Path,
) -> None:
    routes = Routes([get("/v1/status", _echo), post("/v1/infer/{model}", _echo)])
    server = HttpServer(routes, max_body=LIMIT)
    socket = tmp_path / "api.sock"
    await server.serve_socket(_listening_socket(socket))
    loop = asyncio.get_running_loop()

    @given(chunked())
    def check(pieces: list[bytes]) -> None:
        count("agent local API, raw HTTP bytes")
        got = on_loop(loop, _exchange(socket, pieces), ANSWER_WITHIN_S)
        _check(pieces, got)

    try:
        await asyncio.to_thread(check)
        got = await _exchange(socket, [VALID[0]])
        answers = _Answers()
        answers.parser.feed_data(got)
        assert answers.statuses == [200]
        deadline = loop.time() + 30
        while server._connections:  # every connection the fuzz opened is gone
            assert loop.time() < deadline, f"{len(server._connections)} connections held"
            await asyncio.sleep(0.01)  # a poll with a deadline
    finally:
        await server.close()
