"""The agent's resident memory once online and without a model, against bare Python and
against Python with the libraries the agent's job needs imported (the floor every import
adds to); and an enrollment, against its steps done bare (enrollfloor.py)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import psutil

from edge.enroll import enroll
from edge.identity import DevicePaths
from tests.bench.common import Result, rss_of, running_hub
from tests.bench.enrollfloor import enroll_floor
from tests.support import PROFILES, AgentProcess, device_online, mint_token

# The floor: what a minimal agent doing the same job must hold, one line per need, chosen
# by what the job needs rather than by what the agent happens to import (which would make
# every import free). MQTT over mTLS (ssl, aiomqtt); the wire codec and settings models
# (msgspec); its settings file (tomllib); the store (sqlite3); load metrics (psutil);
# downloads (aiohttp) and the local API (httptools, edge/localhttp/); batch compression
# (backports.zstd: compression.zstd from Python 3.14 on); Ed25519 signatures of policies,
# models and releases (cryptography's bindings). Not certificate parsing (x509) nor JWTs:
# they serve enrollment and renewal, which import them when they run.
LIBRARIES = (
    "from cryptography.hazmat.primitives.asymmetric import ed25519\n"
    "import asyncio, ssl, tomllib, aiomqtt, msgspec, sqlite3, psutil, aiohttp, httptools, "
    "backports.zstd"
)
SETTLE_S = 3.0
ENROLLMENTS = 10
PROFILE = PROFILES / "raspberry-pi-4.toml"
# What the unit and the launcher give the agent (systemd/): the agent as a device runs it.
SERVICE_ENV = {"MALLOC_ARENA_MAX": "2"}


async def _agent_rss(root: Path) -> tuple[float, float]:
    """The agent's RSS, online; and the median ms of `ENROLLMENTS` enrollments first."""
    agent = None
    async with running_hub(root / "hub") as hub:
        try:
            took = []
            for n in range(ENROLLMENTS):
                token = await mint_token(hub)  # the operator's step, not the device's
                start = time.perf_counter()
                await enroll(token, DevicePaths(root / f"enrolled-{n}"), PROFILE)
                took.append(time.perf_counter() - start)
            device = DevicePaths(root / "device")
            identity = await enroll(await mint_token(hub), device, PROFILE)
            agent = AgentProcess(
                device.root,
                heartbeat_interval=0.5,
                log=root / "agent.log",
                env=SERVICE_ENV,
                log_level="info",
            )
            while not await device_online(hub, identity.device_id):
                await asyncio.sleep(0.05)  # the benchmark's own poll of the registry
            await asyncio.sleep(SETTLE_S)  # let a few heartbeats pass
            rss = psutil.Process(agent.process.pid).memory_info().rss / 2**20
            return rss, statistics.median(took) * 1000
        finally:
            if agent is not None:
                agent.stop()


def run(root: Path) -> list[Result]:
    bare = rss_of("pass", 1.0)
    floor = rss_of(LIBRARIES, SETTLE_S)
    agent, enroll_ms = asyncio.run(_agent_rss(root))
    floor_ms = (
        statistics.median(asyncio.run(enroll_floor(root / "enroll-floor", ENROLLMENTS))) * 1000
    )
    return [
        Result(
            "agent RSS, online, heartbeating",
            agent,
            floor,
            "MiB",
            f"raw = python + the agent's libraries, no numpy ({floor:.1f}); bare python {bare:.1f}",
        ),
        Result(
            "enrollment, token to certificate on disk",
            enroll_ms,
            floor_ms,
            "ms",
            f"median of {ENROLLMENTS}; raw = the same steps bare (tests/bench/enrollfloor.py): "
            "key made and kept, CSR, CA fetched and pinned, CSR posted, certificate "
            "checked and kept; the server signs it and commits one row",
        ),
    ]
