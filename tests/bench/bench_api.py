"""The web API (guard: token check, revocation lookup, rate limit, metrics; then a
50-device page from SQLite) against a bare aiohttp HTTPS handler returning the same
bytes, both over TLS with keep-alive from one client."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from outpost import tls
from tests.api_client import ApiClient
from tests.bench.common import Result, per_second, running_hub
from tests.support import add_device, free_port

N = 1_000
DEVICES = 50


async def _requests(url: str, context: ssl.SSLContext, headers: dict[str, str]) -> float:
    async with aiohttp.ClientSession() as session:
        for _ in range(20):  # warm up: TLS session, caches
            async with session.get(url, ssl=context, headers=headers) as r:
                await r.read()
        start = time.perf_counter()
        for _ in range(N):
            async with session.get(url, ssl=context, headers=headers) as r:
                assert r.status == 200
                await r.read()
        return per_second(N, time.perf_counter() - start)


async def _run(root: Path) -> tuple[float, float]:
    async with running_hub(root) as hub:
        paths, config = hub.paths, hub.config
        for n in range(DEVICES):
            await add_device(hub, f"dev-bench{n:05d}", labels={"site": "north"})
        client = ApiClient(hub)
        token = await client.token("viewer", subject="bench")
        await client.close()
        context = ssl.create_default_context(cafile=str(paths.ca_cert))
        url = f"{config.hub_url}/api/v1/devices?limit={DEVICES}"
        headers = {"Authorization": f"Bearer {token}"}
        ours = await _requests(url, context, headers)

        # The raw limit: the same response bytes from a handler that does nothing else.
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, ssl=context, headers=headers) as r,
        ):
            body = await r.read()
        bare_app = web.Application()

        async def bare_handler(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        bare_app.router.add_get("/api/v1/devices", bare_handler)
        runner = web.AppRunner(bare_app, access_log=None)
        await runner.setup()
        port = free_port()
        server_ctx = tls.server_context(paths.server_cert, paths.server_key)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        try:
            bare = await _requests(f"https://127.0.0.1:{port}/api/v1/devices", context, headers)
        finally:
            await runner.cleanup()
        assert json.loads(body)["items"]
        return ours, bare


def run(root: Path) -> list[Result]:
    ours, bare = asyncio.run(_run(root))
    return [
        Result(
            f"API: GET /api/v1/devices ({DEVICES} devices)",
            ours,
            bare,
            "req/s",
            "raw = bare aiohttp handler, same bytes, same TLS",
        )
    ]
