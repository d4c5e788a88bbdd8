"""A TCP balancer in front of hub replicas' web ports, as a Kubernetes Service or an HAProxy
would be: each new connection goes to the next replica that accepts one. TLS passes
through untouched (every replica serves the same certificate)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from tests.support import free_port


class Balancer:
    def __init__(self, upstreams: list[int]) -> None:
        self.port = free_port()
        self._upstreams = upstreams
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        start = next(self._turn)
        for n in range(len(self._upstreams)):
            port = self._upstreams[(start + n) % len(self._upstreams)]
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:  # every replica down: the client sees a reset, as it would
            writer.close()
            return
        up_reader, up_writer = upstream
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sink.close()
