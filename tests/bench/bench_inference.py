"""Local inference on the shipped int8 models and a MobileNet-class one: the agent's
internal runner and its local API (a real agent process, over its Unix socket) against a
bare `invoke()` loop on the same model in the same run, every side at the same
interpreter thread count; the local API's overhead; what recording every answer in the
store adds to an answer; and the agent's resident memory with the models loaded."""

from __future__ import annotations

import asyncio
import re
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
from tests.support import (
    PROFILES,
    REPO,
    SHIPPED_MODELS,
    AgentProcess,
    device_online,
    mint_token,
)

DURATION_S = 2.0
SETTLE_S = 3.0
CALLERS = 4  # concurrent callers in the "under load" figures
# Interpreter threads and interpreters per model on every side: the bare loop, the
# runner, and the agent (its device profile's `runtime.num_threads` and
# `runtime.interpreters_per_model`).
THREADS = 2
INTERPRETERS = 1
# Not shipped: MobileNetV2 at width 0.35, 96x96x3, ~0.6 MB int8 (scripts/train_models.py).
MOBILENET = REPO / "tests" / "bench" / "models" / "mobilenet-class" / "1.0.0"
MODELS = [*SHIPPED_MODELS, MOBILENET]
# The model whose local API overhead and answer-recording cost are reported as well.
SMALL = "vibration-anomaly"


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
    """set_tensor + invoke + get_tensor on one interpreter of THREADS threads."""
    interpreter = choose_runtime().interpreter(str(bundle.model_path), THREADS)
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
    """The agent's runner (INTERPRETERS of THREADS threads): the float input checked,
    quantized and run on the worker; one caller, then CALLERS at once."""
    runner = ModelRunner(
        bundle,
        choose_runtime(),
        num_threads=THREADS,
        interpreters=INTERPRETERS,
        queue_limit=CALLERS,
    )
    await asyncio.to_thread(runner.load)
    data = _real_input(bundle)
    try:
        alone = await _callers(1, lambda: runner.infer(data, "float32"))
        loaded = await _callers(CALLERS, lambda: runner.infer(data, "float32"))
        return alone, loaded
    finally:
        runner.close()


async def _local_api(
    socket: Path, bundle: Bundle, counts: Sequence[int] = (1, CALLERS)
) -> list[Figures]:
    """Local programs posting msgpack over the Unix socket, `counts` of them at once in
    turn (the client runs in this process and shares the machine's cores with the agent)."""
    body = msgpack.packb({"input": _real_input(bundle)})
    url = f"http://agent/v1/infer/{bundle.manifest.name}"
    headers = {"Content-Type": "application/msgpack"}
    connector = aiohttp.UnixConnector(path=str(socket), limit=CALLERS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200, await response.text()
                await response.read()

        return [await _callers(count, call) for count in counts]


def _profile(folder: Path) -> Path:
    """The Raspberry Pi 4 profile with THREADS interpreter threads and INTERPRETERS
    interpreters per model, whatever the shipped file says."""
    text = (PROFILES / "raspberry-pi-4.toml").read_text()
    for key, value in (("num_threads", THREADS), ("interpreters_per_model", INTERPRETERS)):
        text, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert found == 1, f"raspberry-pi-4.toml has no single {key}"
    path = folder / "bench-profile.toml"
    path.write_text(text)
    return path


def _configure(device: DevicePaths, report: str) -> None:
    device.config.write_text(
        f'[agent]\n[agent.inference]\nreport = "{report}"\nqueue_limit = {CALLERS}\n'
    )


async def _models_ready(socket: Path, names: Sequence[str]) -> None:
    """Wait until the agent's local API answers and lists every one of `names` ready."""
    deadline = time.monotonic() + 30
    while True:
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket))) as s,
                s.get("http://agent/v1/models") as response,
            ):
                listed = (await response.json())["models"]
            if {m["name"] for m in listed if m["state"] == "ready"} >= set(names):
                return
        except (aiohttp.ClientError, OSError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent did not load {', '.join(names)} in 30 s")
        await asyncio.sleep(0.05)


async def _with_agent(
    root: Path, bundles: list[Bundle]
) -> tuple[dict[str, list[Figures]], float, dict[str, Figures]]:
    """The local API figures of every model and the agent's RSS, online, reporting
    nothing; then SMALL with one caller on an offline agent reporting none, then all."""
    names = [b.manifest.name for b in bundles]
    device = DevicePaths(root / "device")
    async with running_hub(root / "hub") as hub:
        identity = await enroll(await mint_token(hub), device, _profile(root))
        _configure(device, "none")
        directory = ModelDirectory(device.models)
        for b in bundles:
            directory.install(b.folder)
        agent = AgentProcess(device.root, heartbeat_interval=1.0, log=root / "agent.log")
        try:
            while not await device_online(hub, identity.device_id):
                await asyncio.sleep(0.05)  # the benchmark's own poll of the registry
            await _models_ready(device.socket, names)
            await asyncio.sleep(SETTLE_S)
            rss = psutil.Process(agent.process.pid).memory_info().rss / 2**20
            figures = {b.manifest.name: await _local_api(device.socket, b) for b in bundles}
        finally:
            agent.stop()
    # With the hub gone the agent keeps its records (none are uploaded): the difference
    # is the cost of recording an answer in the store, not of sending it, and the hub's
    # intake does not share this process's event loop with the callers.
    small = next(b for b in bundles if b.manifest.name == SMALL)
    by_report = {}
    for report in ("none", "all"):
        _configure(device, report)
        agent = AgentProcess(device.root, heartbeat_interval=1.0, log=root / f"{report}.log")
        try:
            await _models_ready(device.socket, names)
            await asyncio.sleep(SETTLE_S)
            (by_report[report],) = await _local_api(device.socket, small, (1,))
        finally:
            agent.stop()
    return figures, rss, by_report


def run(root: Path) -> list[Result]:
    bundles = [read_bundle(p) for p in MODELS]
    bare, inner = {}, {}
    for b in bundles:  # each runner right after its bare loop, on a machine in the same state
        bare[b.manifest.name] = _bare(b)
        inner[b.manifest.name] = asyncio.run(_runner(b))
    hop = asyncio.run(_thread_hop())
    api, rss, by_report = asyncio.run(_with_agent(root, bundles))
    floor = rss_of(floor_code(MODELS), SETTLE_S)
    same = f"{THREADS} interpreter threads, {INTERPRETERS} interpreter, on every side"
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
        results.append(Result(f"infer {name}: bare invoke loop", raw_rate, None, "inf/s", same))
        for where, (alone, loaded) in (("runner", inner[name]), ("local API", api[name])):
            rate, p50, p99 = alone
            results += [
                Result(f"  {where}, 1 caller", rate, raw_rate, "inf/s", "raw = bare loop"),
                Result(f"  {where}, 1 caller, p50", p50, raw_p50, "us"),
                Result(f"  {where}, 1 caller, p99", p99, raw_p99, "us"),
                Result(f"  {where}, {CALLERS} callers", loaded[0], raw_rate, "inf/s"),
                Result(f"  {where}, {CALLERS} callers, p99", loaded[2], None, "us"),
            ]
        api_p50 = api[name][0][1]
        results.append(
            Result(
                "  local API overhead, 1 caller, p50",
                api_p50 - raw_p50,
                None,
                "us",
                f"= local API p50 - bare p50 ({api_p50:,.0f} - {raw_p50:,.0f} us)",
            )
        )
    none, every = by_report["none"][1], by_report["all"][1]
    results += [
        Result(
            f"flagged answer cost, {SMALL}, p50",
            every - none,
            none,
            "us",
            f"local API, 1 caller, agent offline: p50 with report = all ({every:,.0f} us) "
            "- with report = none; raw = the report = none p50",
        ),
        Result(
            f"agent RSS, online, {len(bundles)} models loaded",
            rss,
            floor,
            "MiB",
            "raw = python + the agent's imports + numpy + LiteRT with the same models",
        ),
    ]
    return results
