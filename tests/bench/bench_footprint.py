"""The agent's resident memory once online, against bare Python and against Python with
the agent's libraries imported (the floor every import adds to)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from edge.enroll import enroll
from edge.identity import DevicePaths
from tests.bench.common import Result, rss_of, running_hub
from tests.support import PROFILES, AgentProcess, device_online, mint_token

# backports.zstd: batch compression (compression.zstd from Python 3.14 on).
LIBRARIES = (
    "import asyncio, ssl, aiomqtt, msgpack, sqlite_utils, psutil, aiohttp, cryptography, "
    "backports.zstd"
)
SETTLE_S = 3.0


async def _agent_rss(root: Path) -> tuple[float, float]:
    agent = None
    async with running_hub(root / "hub") as hub:
        try:
            device = DevicePaths(root / "device")
            start = time.perf_counter()
            identity = await enroll(await mint_token(hub), device, PROFILES / "raspberry-pi-4.toml")
            enroll_ms = (time.perf_counter() - start) * 1000
            agent = AgentProcess(device.root, heartbeat_interval=0.5, log=root / "agent.log")
            while not await device_online(hub, identity.device_id):
                await asyncio.sleep(0.05)  # the benchmark's own poll of the registry
            await asyncio.sleep(SETTLE_S)  # let a few heartbeats pass
            return psutil.Process(agent.process.pid).memory_info().rss / 2**20, enroll_ms
        finally:
            if agent is not None:
                agent.stop()


def run(root: Path) -> list[Result]:
    bare = rss_of("pass", 1.0)
    floor = rss_of(LIBRARIES, SETTLE_S)
    agent, enroll_ms = asyncio.run(_agent_rss(root))
    return [
        Result(
            "agent RSS, online, heartbeating",
            agent,
            floor,
            "MiB",
            f"raw = python + the agent's imports ({floor:.1f}); bare python {bare:.1f}",
        ),
        Result(
            "enrollment, token to certificate on disk",
            enroll_ms,
            None,
            "ms",
            "includes key generation and two HTTPS round trips",
        ),
    ]
