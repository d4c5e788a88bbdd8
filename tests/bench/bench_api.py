"""`GET /api/v1/devices` through the hub's guard (token, revocation, rate limit, metrics)
against a bare aiohttp handler returning the same bytes over the same TLS.

The load comes from a client in a process of its own (tests/bench/httpload.py), so the
figures are the servers': on the same two cores, the client in this process would have
taken its share of every request's time from both servers alike. The hub runs alone in
this process; once it has stopped, the bare server takes its place (same process, same
certificate and TLS settings), serving the bodies the hub answered, by path.

Devices look like live ones (a hello and a heartbeat each: capabilities, load, store,
models), about 1 KB each as the API shows them. Three cases: 50 devices in one page;
1,000 devices walked in pages of 50 (the default) and in pages of 500 (the largest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
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

SECONDS = 2.0  # of load per case, after each connection's warm-up
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
    per_s: float
    server_cpu_us: float  # this process's CPU time (every thread) per request
    client_cpu: float  # the client's share of one core


async def _measure(load: Load) -> Measured:
    """Load the server from the client's own process; this process's CPU time is taken
    over the client's measured span (after its warm-up)."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bench.httpload",
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdin is not None
    assert client.stdout is not None
    client.stdin.write(json.dumps(dataclasses.asdict(load)).encode() + b"\n")
    if await client.stdout.readline() != b"warm\n":
        await client.wait()
        raise RuntimeError(f"the load client failed ({client.returncode})")
    cpu = time.process_time()
    client.stdin.write(b"go\n")
    out = await client.stdout.read()
    cpu = time.process_time() - cpu
    if await client.wait() != 0:
        raise RuntimeError(f"the load client failed ({client.returncode})")
    outcome = Outcome(**json.loads(out))
    return Measured(
        outcome.requests / outcome.seconds,
        cpu / outcome.requests * 1e6,
        outcome.client_cpu_s / outcome.seconds,
    )


async def _bare(
    hub_paths: HubPaths, host: str, case_pages: dict[str, bytes], load: Load
) -> Measured:
    """The raw limit: the same bytes, by path and query, from a handler that does nothing
    else, behind the TLS settings the hub's own listener uses."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=case_pages[request.path_qs], content_type="application/json")

    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    context = tls.server_context(
        hub_paths.server_cert,
        hub_paths.server_key,
        client_ca=hub_paths.ca_cert,
        client_cert_optional=True,
    )
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    try:
        return await _measure(dataclasses.replace(load, port=port))
    finally:
        await runner.cleanup()


async def _run(root: Path) -> list[Result]:
    loads: list[tuple[Case, dict[str, bytes], Load]] = []
    ours: list[Measured] = []
    async with running_hub(root) as hub:
        client = ApiClient(hub)
        token = await client.token("viewer", subject="bench", ttl=3600)
        await client.close()
        host, port = hub.config.web_host, hub.config.web_port
        registered = 0
        for case in CASES:
            await _register(hub, registered, case.devices)
            registered = max(registered, case.devices)
            pages = await _pages(hub, token, case.limit)
            load = Load(
                host=host,
                port=port,
                cafile=str(hub.paths.ca_cert),
                paths=list(pages),
                headers={"Authorization": f"Bearer {token}"},
                connections=CONNECTIONS,
                seconds=SECONDS,
            )
            loads.append((case, pages, load))
            ours.append(await _measure(load))
        paths = hub.paths
    # The hub has stopped: the bare server has this process to itself, as the hub had.
    results = []
    for (case, pages, load), mine in zip(loads, ours, strict=True):
        bare = await _bare(paths, host, pages, load)
        size = sum(map(len, pages.values())) / len(pages)
        results.append(
            Result(
                f"API: GET devices, {case.name}",
                mine.per_s,
                bare.per_s,
                "req/s",
                f"raw = bare aiohttp, same bytes ({size / 1024:,.0f} KiB), same TLS; "
                f"server CPU {mine.server_cpu_us:,.0f} vs {bare.server_cpu_us:,.0f} µs/req; "
                f"client apart, {max(mine.client_cpu, bare.client_cpu):.0%} of a core",
            )
        )
    return results


def run(root: Path) -> list[Result]:
    return asyncio.run(_run(root))
