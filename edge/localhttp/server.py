"""A small HTTP/1.1 server for the agent's local API, on httptools.

Why not aiohttp's server, which the agent used before: its machinery per request (a task,
a stream reader, request and response objects with their header maps, middlewares and
the router) cost 190-220 µs of CPU per call on a 2-core x86 machine, more than ten
times what the local API's small models take to answer; this server, 40 µs for the same
exchange. httptools is llhttp's Python binding (the parser Node.js uses), strict by
default: a request that is ambiguous about where it ends (a Content-Length beside a
chunked encoding, a malformed chunk) is refused, not guessed at.

What a client may rely on:
- keep-alive, and requests pipelined on one connection, answered in order; reading
  pauses while MAX_PIPELINED wait for their answers;
- a body read whole before its handler runs, within its route's limit; a body over it
  is answered 413 once it is sent (up to DISCARD_BYTES of it is read and dropped, so a
  client that sends before it reads still gets the answer), and the connection closes;
- `Expect: 100-continue` answered at once when the body will be read;
- HEAD on every GET route;
- the local API's JSON error shape for what the server itself refuses: an unknown path
  (404, listing the paths), a wrong method (405, with `Allow`), a malformed request
  (400), a head over MAX_HEAD_BYTES (431);
- a connection idle, or stuck mid-request, for KEEPALIVE_S is closed (one sweep, below),
  as is one whose request is not whole KEEPALIVE_S after its first byte (a client that
  trickles), or whose client has not taken its answers for that long; reading pauses
  while a client does not take its answers;
- at most MAX_CONNECTIONS open at once (a new one past it is answered 503 and closed);
- over TCP (loopback only), a Host header that names anything but localhost, 127.0.0.1
  or [::1] is answered 421: a browser page whose name was re-pointed at the device
  (DNS rebinding) reaches nothing.

The parsing and answering of one connection is connection.py's.
"""

from __future__ import annotations

import asyncio
import socket
import time
from email.utils import formatdate

from edge.localhttp.connection import Connection
from edge.localhttp.routes import Routes

KEEPALIVE_S = 75.0  # aiohttp's default, which local programs were written against
MAX_CONNECTIONS = 256  # open at once; past it a new one is answered 503 and closed
SHUTDOWN_S = 10.0  # for answers under way when the server stops


class HttpServer:
    """Serves `routes` on the sockets given to `serve`, until `close`."""

    def __init__(self, routes: Routes, *, max_body: int, keepalive_s: float = KEEPALIVE_S) -> None:
        self.routes = routes
        self.max_body = max_body
        self.keepalive_s = keepalive_s
        self._servers: list[asyncio.Server] = []
        self._connections: set[Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._date = (0, "")
        self._all_closed = asyncio.Event()  # set when closing and no connection is left

    async def serve_socket(self, listener: socket.socket) -> None:
        """Serve on a listening Unix socket."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(self._connection, sock=listener))
        self._sweep_idle()

    async def serve_tcp(self, host: str, port: int) -> None:
        """Serve on `host`:`port` as well."""
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_server(self._tcp_connection, host, port))
        self._sweep_idle()

    async def close(self) -> None:
        """Stop listening, let answers under way finish (for SHUTDOWN_S at most), close."""
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._connections):
            connection.close_when_answered()
        self._note_closed()
        try:
            await asyncio.wait_for(self._all_closed.wait(), SHUTDOWN_S)
        except TimeoutError:
            for connection in list(self._connections):
                connection.abort()
        for server in self._servers:
            await server.wait_closed()

    def _connection(self, *, tcp: bool = False) -> Connection:
        connection = Connection(self, tcp=tcp)
        self._connections.add(connection)
        return connection

    def _tcp_connection(self) -> Connection:
        return self._connection(tcp=True)

    def crowded(self) -> bool:
        """Whether more connections are open than MAX_CONNECTIONS (the newest counted)."""
        return len(self._connections) > MAX_CONNECTIONS

    def forget(self, connection: Connection) -> None:
        """Drop a connection that ended (its own call, from connection_lost)."""
        self._connections.discard(connection)
        self._note_closed()

    def _note_closed(self) -> None:
        if not self._connections and not any(s.is_serving() for s in self._servers):
            self._all_closed.set()

    def _sweep_idle(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._close_idle(), name="local-api.idle-connections"
            )

    async def _close_idle(self) -> None:
        """Close connections quiet for `keepalive_s`: one sweep for all of them, rather than
        a timer re-armed on every request."""
        while True:
            await asyncio.sleep(self.keepalive_s / 5)
            since = time.monotonic() - self.keepalive_s
            for connection in list(self._connections):
                if connection.stale_since(since):
                    connection.abort()

    def date(self) -> str:
        """The Date header's value (RFC 9110 asks an origin server with a clock for it),
        formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]
