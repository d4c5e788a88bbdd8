"""An HTTPS load client in a process of its own, so that what a benchmark measures is the
server: `python -m tests.bench.httpload` reads a `Load` as one line of JSON on stdin,
opens and warms up its connections, prints `warm`, waits for a line on stdin (the server
side starts its clock then), and at the end prints an `Outcome` as JSON.

It keeps `connections` keep-alive TLS connections busy, one request in flight on each,
each cycling through `paths`, for `seconds`. Requests and answers are written and parsed
by hand over asyncio's streams: a few microseconds each, against the tens to hundreds an
aiohttp client spends, so the client is not what limits the figure (its CPU use is
reported beside it to show that).
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
    seconds: float = 2.0
    warmup: int = 10  # requests per connection before the clock starts


@dataclass(frozen=True)
class Outcome:
    requests: int
    seconds: float
    client_cpu_s: float  # this process's CPU time over the measured span
    body_bytes: int


class BadAnswerError(RuntimeError):
    """The server answered something other than 200 with a sized body."""


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = -1
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length < 0:
        raise BadAnswerError(f"no Content-Length in {head[:200]!r}")
    body = await reader.readexactly(length)
    if status != b"200":
        raise BadAnswerError(f"{head[:12]!r} {body[:300]!r}")
    return length


async def _connection(
    load: Load, context: ssl.SSLContext, warm: asyncio.Barrier, go: asyncio.Event, end: list[float]
) -> tuple[int, int]:
    """Warm up, wait for `go`, then request until `end[0]`; return (requests, body bytes)."""
    reader, writer = await asyncio.open_connection(
        load.host, load.port, ssl=context, server_hostname=load.host, limit=1 << 20
    )
    extra = "".join(f"{k}: {v}\r\n" for k, v in load.headers.items())
    requests = [
        f"GET {path} HTTP/1.1\r\nHost: {load.host}:{load.port}\r\n{extra}\r\n".encode()
        for path in load.paths
    ]
    try:
        for i in range(load.warmup):
            await _one(reader, writer, requests[i % len(requests)])
        await warm.wait()
        await go.wait()
        count = size = 0
        while time.perf_counter() < end[0]:
            size += await _one(reader, writer, requests[count % len(requests)])
            count += 1
        return count, size
    finally:
        writer.close()


async def run(load: Load) -> Outcome:
    context = ssl.create_default_context(cafile=load.cafile)
    warm = asyncio.Barrier(load.connections + 1)
    go = asyncio.Event()
    end = [0.0]
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(_connection(load, context, warm, go, end))
            for _ in range(load.connections)
        ]
        await warm.wait()  # every connection open and warmed up
        print("warm", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the go-ahead
        began, cpu = time.perf_counter(), time.process_time()
        end[0] = began + load.seconds
        go.set()
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    results = [t.result() for t in tasks]
    return Outcome(
        requests=sum(n for n, _ in results),
        seconds=elapsed,
        client_cpu_s=cpu,
        body_bytes=sum(b for _, b in results),
    )


def main() -> None:
    load = Load(**json.loads(sys.stdin.readline()))
    outcome = asyncio.run(run(load))
    print(json.dumps(dataclasses.asdict(outcome)))


if __name__ == "__main__":
    main()
