"""A loopback TCP relay between an agent and the broker that a test controls: it can
hold the agent's upstream (the device hears the hub, the hub hears nothing: an
asymmetric partition) and release it, or cut the link outright."""

from __future__ import annotations

import asyncio
import contextlib


class LinkProxy:
    def __init__(self, broker_port: int) -> None:
        self._broker_port = broker_port
        self._upstream = asyncio.Event()
        self._upstream.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def hold_upstream(self) -> None:
        """Stop passing the agent's bytes on (they wait, in order, until `release`)."""
        self._upstream.clear()

    def release(self) -> None:
        self._upstream.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._broker_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer, self._upstream), self._pump(up_reader, writer, None)
        )
        self._writers -= {writer, up_writer}

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
