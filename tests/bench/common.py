"""Shared pieces of the benchmarks: a hub in a temporary folder, device certificates,
timing and the report table."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from hub.app import Hub
from hub.broker.managed import BrokerSupervisor
from hub.cli import load_config
from hub.config import HubConfig
from hub.fleet import pki
from hub.initialise import initialise
from hub.paths import HubPaths
from outpost import files
from tests.support import free_port


@dataclass(frozen=True)
class Result:
    """One line of the report: our figure, the raw limit, and their ratio."""

    name: str
    ours: float
    raw: float | None
    unit: str
    note: str = ""

    def line(self) -> str:
        ratio = f"{self.ours / self.raw:6.2f}x" if self.raw else "      -"
        raw = f"{self.raw:12,.1f}" if self.raw is not None else f"{'-':>12}"
        return f"{self.name:<44} {self.ours:12,.1f} {raw} {ratio}  {self.unit}  {self.note}"


HEADER = f"{'benchmark':<44} {'outpost':>12} {'raw limit':>12} {'ratio':>7}  unit"


def make_hub(root: Path) -> tuple[HubPaths, HubConfig]:
    """Initialise a hub data folder on free loopback ports."""
    paths = HubPaths(root)
    initialise(paths, server_names=[])
    # Rate limits lifted: the benchmarks measure the cost of a request or a message, not
    # the guard's cap (one bench device sends far past a real device's budget).
    paths.config.write_text(
        f"[hub]\nmqtt_port = {free_port()}\nweb_port = {free_port()}\n"
        "api_rate_per_s = 1e9\napi_rate_burst = 100000\n"
        "device_msgs_per_s = 1e9\ndevice_msgs_burst = 1000000\n"
        "device_bytes_per_s = 1000000000\ndevice_queue = 1000000\n"
    )
    return paths, load_config(paths.root)


def bare_broker(paths: HubPaths, config: HubConfig) -> BrokerSupervisor:
    """The hub's Mosquitto as the hub would run it (its configuration, TLS and ACL), for a
    raw limit measured without the hub."""
    return BrokerSupervisor(
        paths,
        program=config.mosquitto,
        host="127.0.0.1",
        port=config.mqtt_port,
        max_packet_bytes=config.max_payload_bytes,
    )


def device_cert(paths: HubPaths, device_id: str, folder: Path) -> tuple[Path, Path]:
    """Issue a device certificate straight from the CA (no enrollment round trip)."""
    ca_key, ca_cert = pki.load_ca(paths.ca_key.read_bytes(), paths.ca_cert.read_bytes())
    key = pki.new_ec_key()
    issued = pki.issue(ca_key, ca_cert, common_name=device_id, public_key=key.public_key(), days=1)
    folder.mkdir(parents=True, exist_ok=True)
    files.write_new(folder / f"{device_id}.key", pki.key_pem(key))
    files.write_new(folder / f"{device_id}.crt", issued.pem)
    return folder / f"{device_id}.crt", folder / f"{device_id}.key"


def rss_of(code: str, settle_s: float = 3.0) -> float:
    """Resident memory (MiB) of `python -c code` once it has run `settle_s` seconds:
    the floors the agent's own figures are set against."""
    process = subprocess.Popen([sys.executable, "-c", f"{code}\nimport time; time.sleep(60)"])
    try:
        time.sleep(settle_s)  # let it finish importing and loading
        return float(psutil.Process(process.pid).memory_info().rss / 2**20)
    finally:
        process.kill()
        process.wait()


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def median_time(fn: Callable[[], object], *, repeat: int = 5) -> float:
    """Median wall time of `fn()` over `repeat` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.asynccontextmanager
async def running_hub(root: Path) -> AsyncIterator[Hub]:
    """A hub in a fresh data folder, ready and connected to its broker; stopped after."""
    paths, config = make_hub(root)
    hub = Hub(paths, config)
    task = asyncio.create_task(hub.run(), name="bench-hub")
    try:
        await asyncio.wait_for(hub.ready.wait(), 20)
        await asyncio.wait_for(hub.parts.link.state.connected.wait(), 20)
        yield hub
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# A result as a local program would post it (~200 bytes packed).
RESULT = {
    "model": "vibration-anomaly",
    "label": "normal",
    "confidence": 0.93,
    "scores": [0.93, 0.05, 0.02],
    "latency_ms": 1.7,
    "input_id": "x" * 100,
}
