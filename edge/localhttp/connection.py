"""One client connection of the local API's server (server.py says what a client may
rely on): its parser, the request being read, and the answers it is owed, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools

from edge.localhttp.messages import Request, Response, answer_head, error
from edge.localhttp.refusals import (
    MAX_HEAD_BYTES,
    crowded,
    head_too_large,
    loopback,
    misdirected,
    too_large,
    unrouted,
)
from edge.localhttp.routes import Route

if TYPE_CHECKING:
    from edge.localhttp.server import HttpServer

logger = logging.getLogger(__name__)

MAX_HEADERS = 100
MAX_PIPELINED = 16  # requests read ahead of their answers before reading pauses
DISCARD_BYTES = 64 << 20  # of a refused body read and dropped before the connection closes
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
        # in a buffer of its own with no bound: the line a head (or a chunked body's
        # trailer fields, after its last chunk's size line) is still in, as far as it
        # has been received, is counted here.
        self._in_head = True
        self._partial_head = 0
        # Bytes received after MAX_PIPELINED requests were read ahead, not yet parsed;
        # reading is paused while there are any: at most one read's worth.
        self._unparsed = b""
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._declared = 0  # the body's Content-Length, once the head is read
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
        self._unparsed = b""
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
        if self._backlogged or len(self._pending) >= MAX_PIPELINED // 2:
            return
        if self._unparsed:  # what was received already comes before more is read
            self._parse_received(b"")
        if self._paused and not self._unparsed and len(self._pending) < MAX_PIPELINED // 2:
            self._paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): answer what it asked, then close.
        (Not called while received bytes wait unparsed: reading is paused then.)"""
        self._stopped = True  # a request cut short by the end is not answered
        if not self._pending and not self._answering:
            return False  # nothing owed: asyncio closes the connection
        self._closing = True
        return True  # keep the connection open to write the answers

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._last_active = time.monotonic()
        self._parse_received(data)

    def _parse_received(self, data: bytes) -> None:
        """Parse what is left of earlier reads, then `data`, until MAX_PIPELINED requests
        wait; keep the rest, reading no more, until they are answered. (A whole read at
        once, up to 256 KiB, could queue thousands of small requests.)"""
        received = (self._unparsed + data if data else self._unparsed) if self._unparsed else data
        start, size, view = 0, len(received), None
        while start < size and not self._stopped and len(self._pending) < MAX_PIPELINED:
            # A piece: the rest of the body under way, or else up to the first empty line
            # (a head's end; a chunked body ends with one too): it completes two requests
            # at most. A GET read whole is one piece; a POST two, its body in the second.
            body_left = self._declared - self._body_size  # 0 in a head; <= 0 if chunked
            if body_left > 0:
                end = start + body_left
            elif (end := received.find(b"\r\n\r\n", start) + 4) == 3:  # none
                end = size
            if end >= size:
                end = size
                if start == 0:  # the usual case: no copy, no view
                    self._parse(received, received, 0, size)
                    start = size
                    break
            if view is None:
                view = memoryview(received)
            self._parse(received, view[start:end], start, end)
            start = end
        self._unparsed = received[start:] if start < size and not self._stopped else b""
        if self._pending and not self._answering:
            self._answering = True
            asyncio.get_running_loop().create_task(self._answer_pending(), name="local-api.answer")
        if self._unparsed or len(self._pending) >= MAX_PIPELINED:
            self._hold_reading()

    def _parse(self, received: bytes, piece: bytes | memoryview, start: int, end: int) -> None:
        """Parse `piece` (`received`[start:end]). If it ends in a head, count the line it
        ends in (what httptools holds of it), and refuse the head past MAX_HEAD_BYTES."""
        try:
            self._parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            self._stopped = True  # refused as its head ended (`on_headers_complete`)
        except httptools.HttpParserError as exc:
            self._refuse_now(error(400, "bad_request", f"malformed HTTP request: {exc}"))
        if self._request_began is None or not self._in_head or self._stopped:
            return  # (no request under way: the piece ended with one)
        last = received.rfind(b"\n", start, end)  # a line's end: what came before is handed over
        self._partial_head = end - last - 1 if last >= 0 else self._partial_head + end - start
        if self._partial_head > MAX_HEAD_BYTES:
            self._refuse_now(head_too_large())

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
        declared = self._headers.get("content-length", "")
        self._declared = int(declared) if declared.isdigit() else 0
        if self._stopped or self._refused is not None:
            return
        if self._parser.should_upgrade():
            # An Upgrade or a CONNECT (this server switches to nothing), refused as its head
            # ends: llhttp stops only once it has completed it, which would then be run.
            self._refuse_now(error(400, "bad_request", "protocol upgrades are not served here"))
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
        expects = self._headers.get("expect", "").lower() == "100-continue"
        if self._declared > limit:
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
        if self._stopped:
            return
        method = self._parser.get_method().decode("latin-1")
        url = httptools.parse_url(self._url) if self._refused is None else None
        raw_path = (url.path or b"/").decode("latin-1") if url else "/"
        request = Request(
            method,
            "/".join(unquote(s) if "%" in s else s for s in raw_path.split("/")),
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
            return unrouted(request, pending.methods, self._server.routes)
        try:
            return await route.handler(request)
        except Exception:
            logger.exception("local API %s %s failed", request.method, request.path)
            return error(500, "internal", f"{request.method} {request.path} failed; see the log")

    def _write(
        self, transport: asyncio.Transport, answer: Response, head_only: bool, close: bool
    ) -> None:
        head = answer_head(answer, self._server.date(), close)
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
