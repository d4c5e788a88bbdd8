"""Local inference on the shipped int8 models: the agent's internal runner and its local
API (a real agent process, over its Unix socket) against a bare `invoke()` loop on the
same model in the same run; and the agent's resident memory with both models loaded."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from tests.bench.bench_footprint import LIBRARIES
from tests.bench.common import Result, rss_of, running_hub
from tests.support import PROFILES, SHIPPED_MODELS, AgentProcess, device_online, mint_token

DURATION_S = 2.0
SETTLE_S = 3.0
CALLERS = 8  # concurrent callers in the "under load" figures


def floor_code(models: Sequence[Path]) -> str:
    """Python code that imports what the agent imports, numpy and LiteRT, and loads
    `models` into interpreters: the floor of an agent holding those models."""
    return f"{LIBRARIES}, numpy\nfrom ai_edge_litert.interpreter import Interpreter\n" + "\n".join(
        f"i{n} = Interpreter(model_path={str(p / 'model.tflite')!r}); i{n}.allocate_tensors()"
        for n, p in enumerate(models)
    )


Figures = tuple[float, float, float]  # per second, p50 and p99 in microseconds


def _real_input(bundle: Bundle) -> bytes:
    """The sample as a local program sends it: real values, float32 bytes."""
    assert bundle.sample is not None
    spec = bundle.manifest.input
    real = (np.array(bundle.sample.input, np.float32) - spec.zero_point) * spec.scale
    return real.astype("<f4").tobytes()


def _figures(latencies: list[float], seconds: float) -> Figures:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(ordered) / seconds, statistics.median(ordered) * 1e6, p99 * 1e6


def _bare(bundle: Bundle) -> Figures:
    """set_tensor + invoke + get_tensor on one interpreter, one thread."""
    interpreter = choose_runtime().interpreter(str(bundle.model_path), 1)
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


async def _callers(count: int, call: Callable[[], Awaitable[object]]) -> Figures:
    """`count` callers, each making one call after another for DURATION_S."""
    latencies: list[float] = []
    start = time.perf_counter()

    async def caller() -> None:
        while time.perf_counter() - start < DURATION_S:
            t = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(caller() for _ in range(count)))
    return _figures(latencies, time.perf_counter() - start)


async def _thread_hop() -> Figures:
    """The floor under the runner: a no-op sent to a worker thread and awaited."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as executor:
        return await _callers(1, lambda: loop.run_in_executor(executor, int))


async def _runner(bundle: Bundle) -> tuple[Figures, Figures]:
    """The agent's runner (one interpreter, one thread): the float input checked,
    quantized and run on the worker; one caller, then CALLERS at once."""
    runner = ModelRunner(
        bundle, choose_runtime(), num_threads=1, interpreters=1, queue_limit=CALLERS
    )
    await asyncio.to_thread(runner.load)
    data = _real_input(bundle)
    try:
        alone = await _callers(1, lambda: runner.infer(data, "float32"))
        loaded = await _callers(CALLERS, lambda: runner.infer(data, "float32"))
        return alone, loaded
    finally:
        runner.close()


async def _local_api(socket: Path, bundle: Bundle) -> tuple[Figures, Figures]:
    """Local programs posting msgpack over the Unix socket: one, then CALLERS at once
    (the client runs in this process and shares the machine's cores with the agent)."""
    body = msgpack.packb({"input": _real_input(bundle)})
    url = f"http://agent/v1/infer/{bundle.manifest.name}"
    headers = {"Content-Type": "application/msgpack"}
    connector = aiohttp.UnixConnector(path=str(socket), limit=CALLERS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()

        return await _callers(1, call), await _callers(CALLERS, call)


async def _with_agent(
    root: Path, bundles: list[Bundle]
) -> tuple[dict[str, tuple[Figures, Figures]], float]:
    async with running_hub(root / "hub") as hub:
        device = DevicePaths(root / "device")
        identity = await enroll(await mint_token(hub), device, PROFILES / "raspberry-pi-4.toml")
        device.config.write_text(
            f'[agent]\n[agent.inference]\nreport = "none"\nqueue_limit = {CALLERS}\n'
        )
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
    hop = asyncio.run(_thread_hop())
    api, rss = asyncio.run(_with_agent(root, bundles))
    floor = rss_of(floor_code(SHIPPED_MODELS), SETTLE_S)
    results = [
        Result(
            "worker thread round trip (no-op), p50",
            hop[1],
            None,
            "us",
            f"{hop[0]:,.0f}/s; the floor of every runner call below",
        )
    ]
    for b in bundles:
        name = b.manifest.name
        raw_rate, raw_p50, raw_p99 = bare[name]
        results.append(Result(f"infer {name}: bare invoke loop", raw_rate, None, "inf/s"))
        for where, (alone, loaded) in (("runner", inner[name]), ("local API", api[name])):
            rate, p50, p99 = alone
            results += [
                Result(f"  {where}, 1 caller", rate, raw_rate, "inf/s", "raw = bare loop"),
                Result(f"  {where}, 1 caller, p50", p50, raw_p50, "us"),
                Result(f"  {where}, 1 caller, p99", p99, raw_p99, "us"),
                Result(f"  {where}, {CALLERS} callers", loaded[0], raw_rate, "inf/s"),
                Result(f"  {where}, {CALLERS} callers, p99", loaded[2], None, "us"),
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
