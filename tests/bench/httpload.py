"""An HTTPS load client in a process of its own, so that what a benchmark measures is the
server: `python -m tests.bench.httpload` reads a `Load` as one line of JSON on stdin,
opens and warms up its connections and prints `warm`; then each line `go` on stdin runs
one round of `seconds` and prints its `Outcome` as one line of JSON; end of input closes.

Each round keeps `connections` keep-alive TLS connections busy, one request in flight on
each, each cycling through `paths`. Requests and answers are written and parsed by hand
over asyncio's streams: a few microseconds each, against the tens to hundreds an aiohttp
client spends, so the client is not what limits the figure (its CPU use is reported
beside it to show that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    host: str
    port: int
    cafile: str
    paths: list[str]
    headers: dict[str, str]  # on stdin, never the command line: a token is a secret
    connections: int = 4
    seconds: float = 1.0  # a round's length
    warmup: int = 10  # requests per connection before the first round


@dataclass(frozen=True)
class Outcome:
    requests: int
    seconds: float
    client_cpu_s: float  # this process's CPU time over the round
    body_bytes: int


class BadAnswerError(RuntimeError):
    """The server answered something other than 200 with a sized body."""


class _Connection:
    """One keep-alive connection cycling through the load's paths."""

    def __init__(self, load: Load, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        extra = "".join(f"{k}: {v}\r\n" for k, v in load.headers.items())
        self._requests = [
            f"GET {path} HTTP/1.1\r\nHost: {load.host}:{load.port}\r\n{extra}\r\n".encode()
            for path in load.paths
        ]
        self._reader = reader
        self._writer = writer
        self._next = 0

    @classmethod
    async def open(cls, load: Load, context: ssl.SSLContext) -> _Connection:
        reader, writer = await asyncio.open_connection(
            load.host, load.port, ssl=context, server_hostname=load.host, limit=1 << 20
        )
        return cls(load, reader, writer)

    async def request(self) -> int:
        """Send the next request and read its answer; the body's size."""
        self._writer.write(self._requests[self._next % len(self._requests)])
        self._next += 1
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = -1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length < 0:
            raise BadAnswerError(f"no Content-Length in {head[:200]!r}")
        body = await self._reader.readexactly(length)
        if head[9:12] != b"200":
            raise BadAnswerError(f"{head[:12]!r} {body[:300]!r}")
        return length

    async def until(self, end: float) -> tuple[int, int]:
        """Request until `end` (perf_counter); (requests, body bytes)."""
        count = size = 0
        while time.perf_counter() < end:
            size += await self.request()
            count += 1
        return count, size

    def close(self) -> None:
        self._writer.close()


async def _round(connections: list[_Connection], seconds: float) -> Outcome:
    began, cpu = time.perf_counter(), time.process_time()
    done = await asyncio.gather(*(c.until(began + seconds) for c in connections))
    return Outcome(
        requests=sum(n for n, _ in done),
        seconds=time.perf_counter() - began,
        client_cpu_s=time.process_time() - cpu,
        body_bytes=sum(b for _, b in done),
    )


async def run(load: Load) -> None:
    context = ssl.create_default_context(cafile=load.cafile)
    connections = list(
        await asyncio.gather(*(_Connection.open(load, context) for _ in range(load.connections)))
    )
    try:
        for _ in range(load.warmup):
            await asyncio.gather(*(c.request() for c in connections))
        print("warm", flush=True)
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "go":
            outcome = await _round(connections, load.seconds)
            print(json.dumps(dataclasses.asdict(outcome)), flush=True)
    finally:
        for c in connections:
            c.close()


def main() -> None:
    asyncio.run(run(Load(**json.loads(sys.stdin.readline()))))


if __name__ == "__main__":
    main()
