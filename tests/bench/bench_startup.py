"""The agent's start-up cost: time from exec to `READY=1` on its notify socket (store
open, local API listening), and its resident memory after idling a minute, without a
model and with one; against the floor measured in the same run: Python importing the
agent's libraries (and numpy and LiteRT with the same model loaded), from exec to exit,
and its memory once loaded."""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from tests.bench.bench_footprint import LIBRARIES, SERVICE_ENV
from tests.bench.bench_inference import floor_code
from tests.bench.common import Result, rss_of, running_hub
from tests.support import PROFILES, SHIPPED_MODELS, AgentProcess, mint_token

STARTS = 3  # starts per agent; the median is reported (warm page cache, as on a restart)
IDLE_S = 60.0  # the "a minute idle", both agents at once
READY_TIMEOUT_S = 60.0
SETTLE_S = 3.0
MODEL = SHIPPED_MODELS[0]


def _floor_ms(code: str) -> float:
    """Median wall time of `python -c code`, exec to exit."""
    times = []
    for _ in range(STARTS):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def _start(device: DevicePaths, log: Path) -> tuple[float, AgentProcess]:
    """Start the agent; return the milliseconds until it said READY=1, and the agent."""
    notify = device.root / "notify.sock"
    notify.unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.setblocking(False)
        start = time.perf_counter()
        agent = AgentProcess(
            device.root,
            heartbeat_interval=10.0,
            log=log,
            env={**SERVICE_ENV, "NOTIFY_SOCKET": str(notify)},
            log_level="info",
        )
        try:
            while True:
                message = await asyncio.wait_for(loop.sock_recv(sock, 4096), READY_TIMEOUT_S)
                if b"READY=1" in message.split(b"\n"):
                    return (time.perf_counter() - start) * 1000, agent
        except BaseException:
            agent.stop()
            raise


async def _agents(root: Path) -> dict[str, tuple[float, float]]:
    """Per case: median milliseconds to READY=1, and RSS (MiB) after IDLE_S."""
    cases = {"no model": (), "1 model": (MODEL,)}
    running: dict[str, tuple[float, AgentProcess]] = {}
    async with running_hub(root / "hub") as hub:
        try:
            for n, (case, models) in enumerate(cases.items()):
                device = DevicePaths(root / f"device-{n}")
                await enroll(await mint_token(hub), device, PROFILES / "raspberry-pi-4.toml")
                directory = ModelDirectory(device.models)
                for folder in models:
                    directory.install(folder)
                times = []
                for attempt in range(STARTS):
                    ms, agent = await _start(device, root / f"agent-{n}-{attempt}.log")
                    times.append(ms)
                    if attempt < STARTS - 1:
                        agent.signal(signal.SIGTERM)
                        await asyncio.to_thread(agent.wait, 30)
                        agent.stop()
                running[case] = statistics.median(times), agent
            await asyncio.sleep(IDLE_S)
            return {
                case: (ms, psutil.Process(agent.process.pid).memory_info().rss / 2**20)
                for case, (ms, agent) in running.items()
            }
        finally:
            for _, agent in running.values():
                agent.stop()


def run(root: Path) -> list[Result]:
    floors = {"no model": LIBRARIES, "1 model": floor_code([MODEL])}
    floor_ms = {case: _floor_ms(code) for case, code in floors.items()}
    floor_rss = {case: rss_of(code, SETTLE_S) for case, code in floors.items()}
    agents = asyncio.run(_agents(root))
    results = []
    for case in floors:
        what = "imports (no numpy)" if case == "no model" else "imports, numpy, LiteRT + model"
        results.append(
            Result(
                f"agent start, exec to READY=1, {case}",
                agents[case][0],
                floor_ms[case],
                "ms",
                f"median of {STARTS}; raw = python with the agent's {what}, exec to exit",
            )
        )
    for case in floors:
        results.append(
            Result(
                f"agent RSS after {IDLE_S:.0f} s idle, {case}",
                agents[case][1],
                floor_rss[case],
                "MiB",
                "online, heartbeating; raw = the same python, loaded",
            )
        )
    return results
