"""Local inference on the shipped int8 models: the agent's internal runner and its local
API (a real agent process, over its Unix socket) against a bare `invoke()` loop on the
same model in the same run; and the agent's resident memory with both models loaded."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgpack
import numpy as np
import psutil

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.inference.runner import ModelRunner
from edge.inference.runtime import choose_runtime
from outpost.modelbundle import Bundle, read_bundle
from tests.bench.common import Result, running_hub
from tests.support import PROFILES, SHIPPED_MODELS, AgentProcess, device_online, mint_token

DURATION_S = 2.0
SETTLE_S = 3.0
FLOOR = (
    "import asyncio, ssl, aiomqtt, msgpack, sqlite_utils, psutil, aiohttp, cryptography, numpy\n"
    "from ai_edge_litert.interpreter import Interpreter\n"
    + "\n".join(
        f"i{n} = Interpreter(model_path={str(p / 'model.tflite')!r}); i{n}.allocate_tensors()"
        for n, p in enumerate(SHIPPED_MODELS)
    )
)


def _real_input(bundle: Bundle) -> bytes:
    """The sample as a local program sends it: real values, float32 bytes."""
    assert bundle.sample is not None
    spec = bundle.manifest.input
    real = (np.array(bundle.sample.input, np.float32) - spec.zero_point) * spec.scale
    return real.astype("<f4").tobytes()


def _figures(latencies: list[float], seconds: float) -> tuple[float, float, float]:
    """Rate per second, p50 and p99 in microseconds."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(ordered) / seconds, statistics.median(ordered) * 1e6, p99 * 1e6


def _bare(bundle: Bundle) -> tuple[float, float, float]:
    """set_tensor + invoke + get_tensor on one interpreter, one thread."""
    runtime = choose_runtime()
    interpreter = runtime.interpreter(str(bundle.model_path), 1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert bundle.sample is not None
    tensor = np.array(bundle.sample.input, np.int8)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < DURATION_S:
        t = time.perf_counter()
        interpreter.set_tensor(inp["index"], tensor)
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        latencies.append(time.perf_counter() - t)
    return _figures(latencies, time.perf_counter() - start)


async def _runner(bundle: Bundle) -> tuple[float, float, float]:
    """The agent's runner: check + quantize the float input, hop to a worker, run."""
    runner = ModelRunner(bundle, choose_runtime(), num_threads=1, interpreters=1, queue_limit=4)
    await asyncio.to_thread(runner.load)
    data = _real_input(bundle)
    latencies = []
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < DURATION_S:
            t = time.perf_counter()
            await runner.infer(data, "float32")
            latencies.append(time.perf_counter() - t)
        return _figures(latencies, time.perf_counter() - start)
    finally:
        runner.close()


async def _local_api(socket: Path, bundle: Bundle) -> tuple[float, float, float]:
    """One local program, one request at a time, msgpack over the Unix socket."""
    body = msgpack.packb({"input": _real_input(bundle)})
    url = f"http://agent/v1/infer/{bundle.manifest.name}"
    headers = {"Content-Type": "application/msgpack"}
    latencies = []
    connector = aiohttp.UnixConnector(path=str(socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        while time.perf_counter() - start < DURATION_S:
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()
            latencies.append(time.perf_counter() - t)
        return _figures(latencies, time.perf_counter() - start)


def _rss_of(code: str) -> float:
    process = subprocess.Popen([sys.executable, "-c", f"{code}\nimport time; time.sleep(60)"])
    try:
        time.sleep(SETTLE_S)  # let it finish importing and loading
        return psutil.Process(process.pid).memory_info().rss / 2**20
    finally:
        process.kill()
        process.wait()


async def _with_agent(
    root: Path, bundles: list[Bundle]
) -> tuple[dict[str, tuple[float, float, float]], float]:
    async with running_hub(root / "hub") as hub:
        device = DevicePaths(root / "device")
        identity = await enroll(await mint_token(hub), device, PROFILES / "raspberry-pi-4.toml")
        device.config.write_text('[agent]\n[agent.inference]\nreport = "none"\n')
        directory = ModelDirectory(device.models)
        for folder in SHIPPED_MODELS:
            directory.install(folder)
        agent = AgentProcess(device.root, heartbeat_interval=1.0, log=root / "agent.log")
        try:
            while not await device_online(hub, identity.device_id):
                await asyncio.sleep(0.05)  # the benchmark's own poll of the registry
            await asyncio.sleep(SETTLE_S)
            rss = psutil.Process(agent.process.pid).memory_info().rss / 2**20
            figures = {b.manifest.name: await _local_api(device.socket, b) for b in bundles}
            return figures, rss
        finally:
            agent.stop()


def run(root: Path) -> list[Result]:
    bundles = [read_bundle(p) for p in SHIPPED_MODELS]
    bare = {b.manifest.name: _bare(b) for b in bundles}
    inner = {b.manifest.name: asyncio.run(_runner(b)) for b in bundles}
    api, rss = asyncio.run(_with_agent(root, bundles))
    floor = _rss_of(FLOOR)
    results = []
    for b in bundles:
        name = b.manifest.name
        raw_rate, raw_p50, raw_p99 = bare[name]
        for where, (rate, p50, p99) in (("runner", inner[name]), ("local API", api[name])):
            results += [
                Result(
                    f"infer {name}, {where}",
                    rate,
                    raw_rate,
                    "inferences/s",
                    "raw = bare invoke loop",
                ),
                Result(f"  p50 latency, {where}", p50, raw_p50, "us"),
                Result(f"  p99 latency, {where}", p99, raw_p99, "us"),
            ]
    results.append(
        Result(
            "agent RSS, online, both models loaded",
            rss,
            floor,
            "MiB",
            "raw = python + the agent's imports + numpy + LiteRT with both models",
        )
    )
    return results
