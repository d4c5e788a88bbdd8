"""`GET /api/v1/devices` through the hub's guard (token, revocation, rate limit, metrics)
against a bare aiohttp handler returning the same bytes over the same TLS.

The load comes from a client in a process of its own (tests/bench/httpload.py), so the
figures are the servers': a client in this process would add its own cost to every
request of both servers, which pulls the ratio towards 1. The bare server runs in this
process beside the hub (idle while the bare one is loaded, as the bare one is idle while
the hub is), with the hub's certificate and TLS settings, and answers the bodies the hub
answered, by path and query. The two are measured in alternating rounds and each figure
is its median round's: on a shared machine a burst of someone else's work spoils a round
or two of each, not one side of a ratio.

Devices look like live ones (a hello and a heartbeat each: capabilities, load, store,
models), about 1.2 KB each as the API shows them. Three cases: 50 devices in one page;
1,000 devices walked in pages of 50 (the default) and in pages of 500 (the largest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from hub.app import Hub
from hub.paths import HubPaths
from hub.store import HeartbeatSeen, HelloSeen
from outpost import tls
from tests.api_client import ApiClient
from tests.bench.common import Result, running_hub
from tests.bench.httpload import Load, Outcome
from tests.support import add_device, free_port

ROUNDS = 5  # per case and server, taken in turn: the figures are the median round's
SECONDS = 1.0  # a round's length, after each connection's warm-up
CONNECTIONS = 4  # requests in flight at once, one per keep-alive connection
PATH = "/api/v1/devices"
REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    devices: int
    limit: int


CASES = (
    Case("50 in 1 page", 50, 50),
    Case("1,000 in pages of 50", 1_000, 50),
    Case("1,000 in pages of 500", 1_000, 500),
)


async def _register(hub: Hub, first: int, last: int) -> None:
    """Devices `first` to `last - 1`, enrolled, then a hello and a heartbeat each."""
    now = time.time()
    for n in range(first, last):
        await add_device(hub, f"dev-bench{n:05d}", labels={"site": "north", "line": str(n % 4)})
    await hub.parts.store.record_presence(
        [event for n in range(first, last) for event in _presence(f"dev-bench{n:05d}", now)]
    )


def _presence(device_id: str, now: float) -> tuple[HelloSeen, HeartbeatSeen]:
    stream = {"records": 0, "bytes": 0, "oldest_ts": None, "fill": 0.0}
    model = {
        "name": "vibration-anomaly",
        "version": "1.4.2",
        "sha256": "5f" * 32,
        "state": "ready",
        "error": "",
    }
    # A long interval: nobody marks them offline while the bench runs (bodies stay fixed).
    interval = 86_400.0
    return (
        HelloSeen(
            device_id=device_id,
            conn="c1",
            now=now,
            profile="raspberry-pi-4",
            agent_version="1.9.0",
            heartbeat_interval=interval,
            capabilities={
                "cores": 4,
                "memory_bytes": 4 << 30,
                "disk_bytes": 32 << 30,
                "accelerator": "none",
                "arch": "aarch64",
            },
            runtime="ai-edge-litert 1.2.0",
            models=[model],
            task_slots=2,
        ),
        HeartbeatSeen(
            device_id=device_id,
            conn="c1",
            now=now,
            heartbeat_interval=interval,
            load={
                "cpu_percent": 12.5,
                "memory_percent": 41.3,
                "disk_percent": 22.0,
                "rss_bytes": 61_440_000,
                "temperature_c": 51.2,
                "tasks_queued": 0,
                "tasks_running": 1,
            },
            store={
                "streams": {"results": stream, "metrics": stream, "events": stream},
                "counters": {"refused.full": 0, "rolled_up.metrics": 12, "wear.bytes": 1 << 20},
                "bytes_written_per_record": 530.0,
            },
            models=[model],
        ),
    )


async def _pages(hub: Hub, token: str, limit: int) -> dict[str, bytes]:
    """Every page of the list at `limit` a page: path and query -> the hub's answer."""
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    headers = {"Authorization": f"Bearer {token}"}
    pages: dict[str, bytes] = {}
    query = f"?limit={limit}"
    async with aiohttp.ClientSession() as session:
        while True:
            url = hub.config.hub_url + PATH + query
            async with session.get(url, ssl=context, headers=headers) as r:
                body = await r.read()
                assert r.status == 200, body
            pages[PATH + query] = body
            cursor = json.loads(body)["next_cursor"]
            if cursor is None:
                return pages
            query = f"?limit={limit}&cursor={cursor}"


@dataclasses.dataclass(frozen=True)
class Measured:
    """One round against one server."""

    per_s: float
    server_cpu_us: float  # this process's CPU time (every thread) per request
    client_cpu: float  # the client's share of one core


class Client:
    """A load client in its own process (httpload.py), warmed up, one round at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdin is not None
        assert process.stdout is not None
        self._process = process
        self._stdin = process.stdin
        self._stdout = process.stdout

    @classmethod
    async def start(cls, load: Load) -> Client:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.bench.httpload",
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        client = cls(process)
        client._stdin.write(json.dumps(dataclasses.asdict(load)).encode() + b"\n")
        await client._line("warm")
        return client

    async def round(self) -> Measured:
        """One round; this process's CPU time is taken over it (the server's, when the
        server is this process and nothing else here is busy)."""
        cpu = time.process_time()
        self._stdin.write(b"go\n")
        outcome = Outcome(**json.loads(await self._line("outcome")))
        cpu = time.process_time() - cpu
        return Measured(
            outcome.requests / outcome.seconds,
            cpu / outcome.requests * 1e6,
            outcome.client_cpu_s / outcome.seconds,
        )

    async def close(self) -> None:
        self._stdin.close()
        await self._process.wait()

    async def _line(self, what: str) -> bytes:
        line = await self._stdout.readline()
        if not line:
            status = await self._process.wait()
            raise RuntimeError(f"the load client ended before its {what} (status {status})")
        return line


class BareServer:
    """The raw limit: the bytes the hub answered, by path and query, from a handler that
    does nothing else, behind the TLS settings of the hub's own listener."""

    def __init__(self, paths: HubPaths, host: str, path: str = PATH) -> None:
        self.pages: dict[str, bytes] = {}
        self.host = host
        self.port = free_port()
        self._paths = paths
        app = web.Application()
        app.router.add_get(path, self._handler)
        self._runner = web.AppRunner(app, access_log=None)

    async def _handler(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pages[request.path_qs], content_type="application/json")

    async def start(self) -> None:
        await self._runner.setup()
        context = tls.server_context(
            self._paths.server_cert,
            self._paths.server_key,
            client_ca=self._paths.ca_cert,
            client_cert_optional=True,
        )
        await web.TCPSite(self._runner, self.host, self.port, ssl_context=context).start()

    async def stop(self) -> None:
        await self._runner.cleanup()


async def _rounds(ours: Load, bare: Load) -> tuple[list[Measured], list[Measured]]:
    """ROUNDS rounds against each server, taken in turn."""
    clients = [await Client.start(ours), await Client.start(bare)]
    try:
        measured: tuple[list[Measured], list[Measured]] = ([], [])
        for _ in range(ROUNDS):
            for client, into in zip(clients, measured, strict=True):
                into.append(await client.round())
        return measured
    finally:
        for client in clients:
            await client.close()


def _median(rounds: list[Measured], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in rounds))


async def _run(root: Path) -> list[Result]:
    results = []
    async with running_hub(root) as hub:
        client = ApiClient(hub)
        token = await client.token("viewer", subject="bench", ttl=3600)
        await client.close()
        bare = BareServer(hub.paths, hub.config.web_host)
        await bare.start()
        try:
            registered = 0
            for case in CASES:
                await _register(hub, registered, case.devices)
                registered = max(registered, case.devices)
                bare.pages = await _pages(hub, token, case.limit)
                load = Load(
                    host=hub.config.web_host,
                    port=hub.config.web_port,
                    cafile=str(hub.paths.ca_cert),
                    paths=list(bare.pages),
                    headers={"Authorization": f"Bearer {token}"},
                    connections=CONNECTIONS,
                    seconds=SECONDS,
                )
                mine, raw = await _rounds(load, dataclasses.replace(load, port=bare.port))
                size = sum(map(len, bare.pages.values())) / len(bare.pages)
                client_cpu = max(_median(mine, "client_cpu"), _median(raw, "client_cpu"))
                results.append(
                    Result(
                        f"API: GET devices, {case.name}",
                        _median(mine, "per_s"),
                        _median(raw, "per_s"),
                        "req/s",
                        f"raw = bare aiohttp, same bytes ({size / 1024:,.0f} KiB), same TLS; "
                        f"server CPU {_median(mine, 'server_cpu_us'):,.0f} vs "
                        f"{_median(raw, 'server_cpu_us'):,.0f} µs/req; "
                        f"client apart, {client_cpu:.0%} of a core",
                    )
                )
        finally:
            await bare.stop()
    return results


def run(root: Path) -> list[Result]:
    return asyncio.run(_run(root))
