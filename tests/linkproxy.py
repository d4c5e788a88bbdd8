"""A loopback TCP relay between an agent and the broker that a test controls: a link
controller. It can

- `cut` the connections it carries (the peers notice and reconnect at once),
- take the link `down` (cut, and refuse new connections until `up`),
- `pause` it (hold every byte, both ways, in order, until `resume`), or hold only the
  agent's upstream (`hold_upstream`/`release`: the device hears the hub, the hub hears
  nothing, an asymmetric partition),
- `shape` it: a bandwidth cap in bytes/s and a one-way delay, each way, and loss.

Loss on TCP: TCP itself never loses a byte it delivered, so a lossy radio shows up to
the peers as a stream that stalls or breaks. Two models, both per relayed chunk (at most
`CHUNK` bytes) and drawn from a seeded generator so a run can be repeated:
`reset_rate` resets the connection (both sockets aborted) and `corrupt_rate` flips one
byte, which the receiving TLS peer detects (bad record MAC) and closes the connection
on. Either way the MQTT session breaks and the agent reconnects; nothing corrupted is
ever taken for data.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass

CHUNK = 4096  # relayed at a time: small enough that a bandwidth cap paces smoothly


@dataclass(frozen=True)
class Shape:
    """How the link treats bytes; the default passes them untouched."""

    rate_bytes_per_s: float = 0.0  # 0: no cap
    delay_s: float = 0.0  # each way
    reset_rate: float = 0.0  # chance per chunk that the connection is reset
    corrupt_rate: float = 0.0  # chance per chunk that one byte is flipped


class LinkProxy:
    def __init__(self, broker_port: int, *, seed: int = 0) -> None:
        self._broker_port = broker_port
        self._upstream = asyncio.Event()
        self._upstream.set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._down = False
        self._shape = Shape()
        self._random = random.Random(seed)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()  # one per connection carried
        self.port = 0
        self.connections = 0  # accepted while up, for reports
        self.faults = 0  # connections reset or corrupted by `shape`

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Cut every connection and wait for their relays to end."""
        self._upstream.set()
        self._flowing.set()
        self._shape = Shape()
        self.down()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.gather(*self._relays, return_exceptions=True)

    def hold_upstream(self) -> None:
        """Stop passing the agent's bytes on (they wait, in order, until `release`)."""
        self._upstream.clear()

    def release(self) -> None:
        self._upstream.set()

    def pause(self) -> None:
        """Hold every byte, both ways, until `resume`; connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def down(self) -> None:
        """Cut the link and refuse new connections (each is reset as soon as it is
        accepted) until `up`."""
        self._down = True
        self.cut()

    def up(self) -> None:
        self._down = False

    def shape(self, shape: Shape) -> None:
        """Apply a bandwidth cap, delay and loss to bytes relayed from now on."""
        self._shape = shape

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._broker_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        self._writers |= {writer, up_writer}
        pair = (writer, up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, self._upstream, pair),
            self._pump(up_reader, writer, None, pair),
        )
        self._writers -= {writer, up_writer}
        self._relays.discard(relay)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        gate: asyncio.Event | None,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        """Read as bytes come and deliver each chunk after the delay: reading ahead keeps
        the delay a latency, not a cap on throughput."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, sink, gate, pair))
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(CHUNK):
                queue.put_nowait((time.monotonic(), data))
        queue.put_nowait(None)
        await deliver

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        sink: asyncio.StreamWriter,
        gate: asyncio.Event | None,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        free_at = 0.0  # when the capped link has sent what it was given
        with contextlib.suppress(OSError, ConnectionError):
            while (item := await queue.get()) is not None:
                read_at, data = item
                shape = self._shape
                if gate is not None:
                    await gate.wait()
                await self._flowing.wait()
                send_at = max(time.monotonic(), read_at + shape.delay_s, free_at)
                if shape.rate_bytes_per_s > 0:
                    free_at = send_at + len(data) / shape.rate_bytes_per_s
                    send_at = free_at  # the last byte leaves when the cap allows
                if (wait := send_at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # the link's latency, by design
                if shape.reset_rate and self._random.random() < shape.reset_rate:
                    self.faults += 1
                    for writer in pair:
                        writer.transport.abort()
                    return
                if shape.corrupt_rate and self._random.random() < shape.corrupt_rate:
                    self.faults += 1
                    at = self._random.randrange(len(data))
                    data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
