"""The HTTPS listener: a cap on connections per client address, counted from the TCP
accept (before the TLS handshake, which is where half-open connections sit), and a
deadline for the handshake.

aiohttp's `TCPSite` hands the socket to asyncio's TLS layer directly, so a connection
is only seen once its handshake is done: 500 connections that never finish one were
held for as long as the kernel kept them, each an open file. Here every accepted
connection passes through `_PerAddress` first, which counts it against its address
and only then starts asyncio's own TLS protocol (`SSLProtocol`, the one `TCPSite`
would use) in front of aiohttp's request handler.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from asyncio import sslproto
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)


class CappedSite(web.TCPSite):
    """A `TCPSite` with at most `per_address` connections from one address and a TLS
    handshake deadline of `handshake_timeout` seconds."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext,
        per_address: int,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._per_address = per_address
        self._handshake_timeout = handshake_timeout
        self.open: collections.Counter[str] = collections.Counter()  # by address
        self.refused = 0  # connections closed at once: their address was at its cap

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        handler = self._runner.server
        assert handler is not None
        assert self._ssl_context is not None
        context = self._ssl_context

        def accept() -> _PerAddress:
            return _PerAddress(self, loop, lambda: handler(), context)

        self._server = await loop.create_server(
            accept, self._host, self._port, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


class _PerAddress(asyncio.BufferedProtocol):
    """Counts one connection against its address; past the cap, closes it at once."""

    def __init__(
        self,
        site: CappedSite,
        loop: asyncio.AbstractEventLoop,
        make_handler: Any,
        context: ssl.SSLContext,
    ) -> None:
        self._site = site
        self._loop = loop
        self._make_handler = make_handler
        self._context = context
        self._address: str | None = None
        self._tls: sslproto.SSLProtocol | None = None
        self._spare = bytearray(256)  # reads of a refused connection go nowhere

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        site = self._site
        if site.open[address] >= site._per_address:
            site.refused += 1
            if site.refused == 1 or site.refused % 1000 == 0:
                logger.warning(
                    "refused a connection from %s: %d open from that address already "
                    "(%d refused so far)",
                    address,
                    site.open[address],
                    site.refused,
                )
            transport.close()  # nothing was read or written: closes at once
            return
        self._address = address
        site.open[address] += 1
        self._tls = sslproto.SSLProtocol(
            self._loop,
            self._make_handler(),
            self._context,
            None,  # type: ignore[arg-type]  # no waiter: nothing awaits the handshake
            server_side=True,
            ssl_handshake_timeout=site._handshake_timeout,  # type: ignore[arg-type]
        )
        self._tls.connection_made(transport)

    def get_buffer(self, sizehint: int) -> Any:
        if self._tls is None:
            return self._spare
        return self._tls.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._tls is not None:
            self._tls.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        # asyncio's SSLProtocol may answer True (keep the socket open while it
        # flushes), though typeshed says it answers nothing.
        tls: Any = self._tls
        return tls.eof_received() if tls is not None else None

    def pause_writing(self) -> None:
        if self._tls is not None:
            self._tls.pause_writing()

    def resume_writing(self) -> None:
        if self._tls is not None:
            self._tls.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            open_ = self._site.open
            open_[self._address] -= 1
            if open_[self._address] <= 0:
                del open_[self._address]
            self._address = None
        if self._tls is not None:
            self._tls.connection_lost(exc)
