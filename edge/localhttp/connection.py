"""One client connection of the local API's server (server.py says what a client may
rely on): its parser, the request being read, and the answers it is owed, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from edge.localhttp.messages import Request, Response, error
from edge.localhttp.refusals import (
    MAX_HEAD_BYTES,
    crowded,
    head_too_large,
    loopback,
    misdirected,
    too_large,
)
from edge.localhttp.routes import Route

if TYPE_CHECKING:
    from edge.localhttp.server import HttpServer

logger = logging.getLogger(__name__)

MAX_HEADERS = 100
MAX_PIPELINED = 16  # requests read ahead of their answers before reading pauses
DISCARD_BYTES = 64 << 20  # of a refused body read and dropped before the connection closes
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {s.value: s.phrase for s in HTTPStatus}


class Pending:
    """A request read whole and waiting for its answer, or refused as it was read."""

    __slots__ = ("head", "keep_alive", "methods", "refused", "request", "route")

    def __init__(
        self,
        request: Request,
        route: Route | None,
        methods: dict[str, Route] | None,
        refused: Response | None,
        *,
        keep_alive: bool,
        head: bool,
    ) -> None:
        self.request, self.route, self.methods, self.refused = request, route, methods, refused
        self.keep_alive, self.head = keep_alive, head


class Connection(asyncio.Protocol):
    """One client connection: its parser, the request being read, the answers owed."""

    def __init__(self, server: HttpServer, *, tcp: bool = False) -> None:
        self._server = server
        self._tcp = tcp  # the Host must then be a loopback name
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._pending: deque[Pending] = deque()
        self._answering = False
        self._paused = False  # reading, while MAX_PIPELINED answers are owed
        self._backlogged = False  # the client does not take its answers (the write buffer)
        self._drained = asyncio.Event()
        self._closing = False  # answer what was read, then close
        self._stopped = False  # nothing more is read from this connection
        self._last_active = time.monotonic()
        self._request_began: float | None = None  # the first byte of a request not yet whole
        # httptools hands over a header only once it is whole, and keeps a partial one
        # in a buffer of its own with no bound: a head (or a chunked body's trailer
        # fields, after its last chunk's size line) still incomplete after a whole read
        # is counted here (only reads that began and ended in the same head).
        self._in_head = True
        self._completed = 0  # requests read whole on this connection
        self._partial_head = 0
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._limit = 0
        self._route: Route | None = None
        self._methods: dict[str, Route] | None = None
        self._params: dict[str, str] = {}
        self._refused: Response | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._server.crowded():
            self._stopped = True
            self._write(transport, crowded(), head_only=False, close=True)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._stopped = True
        self._pending.clear()  # no one to answer; a handler under way still finishes
        self._drained.set()  # an answer waiting for room: nothing more is written

    def pause_writing(self) -> None:
        """The client does not read its answers as fast as they come: read no more of its
        requests until it has (pipelined answers would pile up in memory unsent)."""
        self._backlogged = True
        self._drained.clear()
        self._hold_reading()

    def resume_writing(self) -> None:
        self._backlogged = False
        self._last_active = time.monotonic()
        self._drained.set()
        self._release_reading()

    def _hold_reading(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _release_reading(self) -> None:
        if self._paused and not self._backlogged and len(self._pending) < MAX_PIPELINED // 2:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): answer what it asked, then close."""
        self._stopped = True  # a request cut short by the end is not answered
        if not self._pending and not self._answering:
            return False  # nothing owed: asyncio closes the connection
        self._closing = True
        return True  # keep the connection open to write the answers

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._last_active = time.monotonic()
        in_head, completed = self._in_head, self._completed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops at an Upgrade or a CONNECT; this server switches to nothing.
            self._refuse_now(error(400, "bad_request", "protocol upgrades are not served here"))
        except httptools.HttpParserError as exc:
            self._refuse_now(error(400, "bad_request", f"malformed HTTP request: {exc}"))
        if in_head and self._in_head and completed == self._completed and not self._stopped:
            self._partial_head += len(data)
            if self._partial_head > MAX_HEAD_BYTES:
                self._refuse_now(head_too_large())
        if self._pending and not self._answering:
            self._answering = True
            asyncio.get_running_loop().create_task(self._answer_pending(), name="local-api.answer")
        if len(self._pending) >= MAX_PIPELINED:
            self._hold_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._request_began = time.monotonic()

    def on_url(self, url: bytes) -> None:
        if self._stopped or self._count_head(len(url)):
            return
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._stopped or self._count_head(len(name) + len(value)):
            return
        if len(self._headers) >= MAX_HEADERS:
            self._refuse_now(error(431, "headers_too_large", f"more than {MAX_HEADERS} headers"))
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        known = self._headers.get(key)
        self._headers[key] = text if known is None else f"{known}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head, self._partial_head = False, 0
        if self._stopped or self._refused is not None:
            return
        if self._tcp and not loopback(self._headers.get("host")):
            self._refuse(misdirected())
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(error(400, "bad_request", "malformed request target"))
            return
        raw_path = (url.path or b"/").decode("latin-1")
        found = self._server.routes.match(raw_path)
        if found is not None:
            self._methods, self._params = found
            method = self._parser.get_method().decode("latin-1")
            self._route = self._methods.get("GET" if method == "HEAD" else method)
        limit = self._server.max_body
        if self._route is not None and self._route.max_body is not None:
            limit = self._route.max_body
        self._limit = limit
        declared = self._headers.get("content-length", "")
        expects = self._headers.get("expect", "").lower() == "100-continue"
        if declared.isdigit() and int(declared) > limit:
            if expects:  # the client waits to hear before it sends: no body to drop
                self._refuse_now(too_large(limit))
            else:
                self._refuse(too_large(limit))
        elif expects and self._transport is not None and not self._pending and not self._answering:
            # (With answers owed, a 100 would jump their queue: the client's own wait
            # for it runs out, and it sends the body anyway.)
            self._transport.write(_CONTINUE)

    def on_chunk_header(self) -> None:
        self._in_head = True  # a chunk's size line; after the last one, trailer fields

    def on_body(self, body: bytes) -> None:
        self._in_head, self._partial_head = False, 0
        if self._stopped:
            return
        self._body_size += len(body)
        if self._refused is not None:
            if self._body_size > DISCARD_BYTES:
                self._refuse_now(self._refused)
            return
        if self._body_size > self._limit:
            self._refuse(too_large(self._limit))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True  # what comes next is the next request's head
        self._partial_head = 0
        self._request_began = None
        self._completed += 1
        if self._stopped:
            return
        method = self._parser.get_method().decode("latin-1")
        url = httptools.parse_url(self._url) if self._refused is None else None
        raw_path = (url.path or b"/").decode("latin-1") if url else "/"
        request = Request(
            method,
            "/".join(_unquote(s) for s in raw_path.split("/")),
            (url.query or b"").decode("latin-1") if url else "",
            self._headers,
            b"".join(self._body),
            self._params,
        )
        keep_alive = self._refused is None and self._parser.should_keep_alive()
        self._pending.append(
            Pending(
                request,
                self._route,
                self._methods,
                self._refused,
                keep_alive=keep_alive,
                head=method == "HEAD",
            )
        )
        self._reset()

    # answering

    def _count_head(self, size: int) -> bool:
        """Count `size` more bytes of the head; refuse it at once (and say so) when that
        takes it over the bound: nothing of a head that long is kept or read further."""
        self._head_bytes += size
        if self._head_bytes <= MAX_HEAD_BYTES:
            return False
        self._refuse_now(head_too_large())
        return True

    def _refuse(self, answer: Response) -> None:
        """Answer this request with `answer` once it has been read, then close."""
        self._refused = answer
        self._body.clear()

    def _refuse_now(self, answer: Response) -> None:
        """Answer with `answer` after what is already owed, read nothing more, close."""
        self._stopped = True
        request = Request("GET", "/", "", {}, b"", {})
        self._pending.append(Pending(request, None, None, answer, keep_alive=False, head=False))
        self._reset()

    async def _answer_pending(self) -> None:
        try:
            while self._pending:
                pending = self._pending.popleft()
                self._release_reading()
                answer = pending.refused or await self._run(pending)
                if self._backlogged:  # the answers before it are not taken yet
                    await self._drained.wait()
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                close = not pending.keep_alive or (self._closing and not self._pending)
                self._write(transport, answer, pending.head, close)
                if close:
                    self._stopped = True
                    transport.close()
                    return
        finally:
            self._answering = False
            self._last_active = time.monotonic()

    async def _run(self, pending: Pending) -> Response:
        request, route = pending.request, pending.route
        if route is None:
            return self._unrouted(request, pending.methods)
        try:
            return await route.handler(request)
        except Exception:
            logger.exception("local API %s %s failed", request.method, request.path)
            return error(500, "internal", f"{request.method} {request.path} failed; see the log")

    def _unrouted(self, request: Request, methods: dict[str, Route] | None) -> Response:
        if methods is None:
            paths = ", ".join(self._server.routes.listing())
            return error(404, "not_found", f"no such path: {request.path}; paths: {paths}")
        allowed = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
        return error(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}; use {allowed}",
            Allow=allowed,
        )

    def _write(
        self, transport: asyncio.Transport, answer: Response, head_only: bool, close: bool
    ) -> None:
        status = answer.status
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {answer.content_type}\r\n"
            f"Content-Length: {len(answer.body)}\r\n"
            f"Date: {self._server.date()}\r\n"
        ]
        if answer.headers:
            lines += [f"{name}: {value}\r\n" for name, value in answer.headers.items()]
        if close:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        if head_only:
            transport.write(head)
        elif len(answer.body) < 64 * 1024:
            transport.write(head + answer.body)  # one write, one system call
        else:
            transport.write(head)
            transport.write(answer.body)

    # the server's

    def close_when_answered(self) -> None:
        """Close once what was read is answered (now, if nothing is)."""
        self._closing = True
        if not self._answering and not self._pending and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def stale_since(self, since: float) -> bool:
        """Whether the connection is due to close: nothing read or answered since `since`
        with no answer owed, a request begun before `since` and not yet whole (a client
        that trickles its bytes), or answers not taken since then."""
        if self._request_began is not None and self._request_began < since:
            return True
        if self._backlogged:
            return self._last_active < since
        return not self._answering and not self._pending and self._last_active < since


def _unquote(segment: str) -> str:
    return unquote(segment) if "%" in segment else segment
