"""What the operator's tools cost, on a fleet of 1,000 live devices.

- `outpost-hub devices list --json` run as a command (a new process each time: imports,
  TLS, two pages of 500 devices) against the raw limit of a bare Python process making
  the same two requests with aiohttp over the same TLS: what the CLI adds to a command.
- `GET /api/v1/tasks?state=queued` (50 queued tasks, each explained: "no device has the
  model ...", from a view of the fleet at most a second old) against a bare aiohttp
  handler answering the same bytes, as in the API benchmark: what the explanations cost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from hub.store import NewTask
from tests.api_client import ApiClient
from tests.bench.bench_api import CONNECTIONS, SECONDS, BareServer, _median, _register, _rounds
from tests.bench.common import Result, running_hub
from tests.bench.httpload import Load

DEVICES = 1_000
QUEUED = 50
COMMAND_RUNS = 7  # each a new process; the figure is the median
REPO = Path(__file__).resolve().parents[2]

# The raw limit of one CLI command: a bare Python process fetching the same pages.
BARE_CLIENT = """
import asyncio, ssl, sys, aiohttp
async def main():
    url, ca, token = sys.argv[1:4]
    context = ssl.create_default_context(cafile=ca)
    async with aiohttp.ClientSession() as session:
        query = "?limit=500"
        while True:
            async with session.get(url + "/api/v1/devices" + query, ssl=context,
                                   headers={"Authorization": "Bearer " + token}) as r:
                page = await r.json()
            if not page["next_cursor"]:
                return
            query = "?limit=500&cursor=" + page["next_cursor"]
asyncio.run(main())
"""


async def _timed(*argv: str) -> float:
    """Wall time of a command run to completion, in seconds (it must succeed)."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return time.perf_counter() - started


async def _run(root: Path) -> list[Result]:
    results = []
    async with running_hub(root) as hub:
        client = ApiClient(hub)
        token = await client.token("operator", subject="bench", ttl=3600)
        await client.close()
        await _register(hub, 0, DEVICES)
        token_file = root / "operator.token"
        token_file.write_text(token)

        url, ca = hub.config.hub_url, str(hub.paths.ca_cert)
        cli = [sys.executable, "-m", "hub.cli", "devices", "list", "--json"]
        cli += ["--hub", url, "--token-file", str(token_file), "--ca", ca]
        bare = [sys.executable, "-c", BARE_CLIENT, url, ca, token]
        mine, raw = [], []
        for _ in range(COMMAND_RUNS):  # in turns, so a busy moment spoils both alike
            mine.append(await _timed(*cli))
            raw.append(await _timed(*bare))
        results.append(
            Result(
                f"CLI: devices list --json, {DEVICES:,} devices",
                statistics.median(mine) * 1000,
                statistics.median(raw) * 1000,
                "ms",
                "a new process each run; raw = a bare Python process fetching the same 2 "
                "pages with aiohttp over the same TLS",
            )
        )

        now = time.time()
        await hub.parts.store.create_tasks(
            [
                NewTask(
                    f"tsk-bench{n:05d}",
                    "not-in-fleet",
                    "",
                    b"\x91\x01",
                    "float32",
                    5,
                    now + 3600,
                    30.0,
                    {},
                    "bench",
                )
                for n in range(QUEUED)
            ],
            now=now,
        )
        path = f"/api/v1/tasks?state=queued&limit={QUEUED}"
        reader = ApiClient(hub)
        page = await reader.call("GET", path, token=token)
        await reader.close()
        assert page.status == 200, page.body
        assert page.body["items"][0]["waiting"] == "no device has the model not-in-fleet"
        server = BareServer(hub.paths, hub.config.web_host, path="/api/v1/tasks")
        server.pages = {path: json.dumps(page.body).encode()}
        await server.start()
        try:
            load = Load(
                host=hub.config.web_host,
                port=hub.config.web_port,
                cafile=ca,
                paths=[path],
                headers={"Authorization": f"Bearer {token}"},
                connections=CONNECTIONS,
                seconds=SECONDS,
            )
            ours, bare_rounds = await _rounds(load, dataclasses.replace(load, port=server.port))
        finally:
            await server.stop()
        results.append(
            Result(
                f"API: GET tasks, {QUEUED} queued explained, {DEVICES:,} devices",
                _median(ours, "per_s"),
                _median(bare_rounds, "per_s"),
                "req/s",
                "each task says why it waits (a fleet view at most 1 s old); raw = bare "
                "aiohttp, same bytes, same TLS",
            )
        )
    return results


def run(root: Path) -> list[Result]:
    return asyncio.run(_run(root))
