"""Local inference on the shipped int8 models and a MobileNet-class one: the agent's
internal runner and its local API (a real agent process, over its Unix socket) against a
bare `invoke()` loop on the same model in the same run, every side at the same
interpreter thread count; the local API's overhead; what recording every answer in the
store adds to an answer; and the agent's resident memory with the models loaded.

A figure and its raw limit are measured in alternating rounds (bare, 1 caller, CALLERS
callers, bare, ...), and a rate is the median of its rounds': on a shared machine a burst
of someone else's work spoils a round or two of each, not one side of a ratio."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from edge.enroll import enroll
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.inference.runner import ModelRunner
from edge.inference.runtime import choose_runtime
from edge.inference.workers import Workers
from hub.app import Hub
from outpost.modelbundle import Bundle, read_bundle
from tests.bench.apifloor import bare_http, client_session, lean_poster, poster, real_input
from tests.bench.bench_footprint import LIBRARIES
from tests.bench.common import Result, rss_of, running_hub
from tests.bench.rounds import ROUND_S, Call, Figures, Round, alternate, callers
from tests.support import (
    PROFILES,
    REPO,
    SHIPPED_MODELS,
    AgentProcess,
    device_online,
    mint_token,
)

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
# The model whose answer-recording cost is reported as well.
SMALL = "vibration-anomaly"


def floor_code(models: Sequence[Path]) -> str:
    """Python code that imports what the agent imports, numpy and LiteRT, and loads
    `models` into interpreters: the floor of an agent holding those models."""
    return f"{LIBRARIES}, numpy\nfrom ai_edge_litert.interpreter import Interpreter\n" + "\n".join(
        f"i{n} = Interpreter(model_path={str(p / 'model.tflite')!r}); i{n}.allocate_tensors()"
        for n, p in enumerate(models)
    )


class BareLoop:
    """set_tensor + invoke + get_tensor on one interpreter of THREADS threads."""

    def __init__(self, bundle: Bundle) -> None:
        self._interpreter = choose_runtime().interpreter(str(bundle.model_path), THREADS)
        self._interpreter.allocate_tensors()
        (self._inp,) = self._interpreter.get_input_details()
        (self._out,) = self._interpreter.get_output_details()
        assert bundle.sample is not None
        self._tensor = np.array(bundle.sample.input, np.int8)

    def round(self) -> Round:
        """Invoke for ROUND_S (blocking: nothing else runs meanwhile in this process)."""
        interpreter, inp, out = self._interpreter, self._inp["index"], self._out["index"]
        latencies = []
        start = time.perf_counter()
        while time.perf_counter() - start < ROUND_S:
            t = time.perf_counter()
            interpreter.set_tensor(inp, self._tensor)
            interpreter.invoke()
            interpreter.get_tensor(out)
            latencies.append(time.perf_counter() - t)
        return latencies, time.perf_counter() - start


async def _against_bare(bundle: Bundle, call: Call) -> tuple[Figures, Figures, Figures]:
    """The bare loop, then `call` from 1 caller and from CALLERS, in alternating rounds."""
    bare = BareLoop(bundle)

    async def bare_round() -> Round:
        return bare.round()

    raw, alone, loaded = await alternate(
        [bare_round, lambda: callers(1, call), lambda: callers(CALLERS, call)]
    )
    return raw, alone, loaded


async def _thread_hop() -> tuple[Figures, Figures]:
    """The floor under the runner: a no-op sent to one of its worker threads and awaited
    (edge/inference/workers.py), beside the same through `loop.run_in_executor`."""
    loop = asyncio.get_running_loop()
    workers = Workers(1, "bench-hop")
    try:
        with ThreadPoolExecutor(1) as executor:
            runner, executor_hop = await alternate(
                [
                    lambda: callers(1, lambda: workers.submit(int)),
                    lambda: callers(1, lambda: loop.run_in_executor(executor, int)),
                ]
            )
    finally:
        workers.shutdown()
    return runner, executor_hop


async def _runner(bundle: Bundle) -> tuple[Figures, Figures, Figures]:
    """The agent's runner (INTERPRETERS of THREADS threads): the float input checked,
    quantized and run on the worker; against the bare loop, 1 caller and CALLERS."""
    runner = ModelRunner(
        bundle,
        choose_runtime(),
        num_threads=THREADS,
        interpreters=INTERPRETERS,
        queue_limit=CALLERS,
    )
    await asyncio.to_thread(runner.load)
    data = real_input(bundle)
    try:
        return await _against_bare(bundle, lambda: runner.infer(data, "float32"))
    finally:
        runner.close()


async def _lean_against_bare(bundle: Bundle, socket: Path) -> tuple[Figures, Figures]:
    """The bare loop, then one caller with the lean client (leanhttp.py), alternating."""
    bare = BareLoop(bundle)
    connection, call = await lean_poster(socket, bundle)

    async def bare_round() -> Round:
        return bare.round()

    try:
        raw, lean = await alternate([bare_round, lambda: callers(1, call)])
    finally:
        connection.close()
    return raw, lean


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


async def _device(
    hub: Hub, folder: Path, report: str, bundles: Sequence[Bundle]
) -> tuple[DevicePaths, str]:
    """A device enrolled with the bench profile, its models installed, reporting
    `report`; and its id."""
    device = DevicePaths(folder)
    identity = await enroll(await mint_token(hub), device, _profile(folder.parent))
    device.config.write_text(
        f'[agent]\n[agent.inference]\nreport = "{report}"\nqueue_limit = {CALLERS}\n'
    )
    directory = ModelDirectory(device.models)
    for b in bundles:
        directory.install(b.folder)
    return device, identity.device_id


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


async def _with_agents(
    root: Path, bundles: list[Bundle]
) -> tuple[
    dict[str, tuple[Figures, Figures, Figures]],
    dict[str, tuple[Figures, Figures]],
    float,
    dict[str, Figures],
]:
    """Every model over the local API of an online agent reporting nothing, against the
    bare loop beside it, and that agent's RSS; then, the hub stopped, SMALL from one
    caller on it and on a second agent that records every answer, in alternating rounds."""
    names = [b.manifest.name for b in bundles]
    with contextlib.ExitStack() as agents:  # stopped at the end, however it ends
        async with running_hub(root / "hub") as hub:
            quiet, device_id = await _device(hub, root / "device", "none", bundles)
            recorder, _ = await _device(hub, root / "recorder", "all", bundles)
            agent = AgentProcess(
                quiet.root, heartbeat_interval=1.0, log=root / "agent.log", log_level="info"
            )
            agents.callback(agent.stop)
            while not await device_online(hub, device_id):
                await asyncio.sleep(0.05)  # the benchmark's own poll of the registry
            await _models_ready(quiet.socket, names)
            await asyncio.sleep(SETTLE_S)
            rss = psutil.Process(agent.process.pid).memory_info().rss / 2**20
            api, lean = {}, {}
            async with client_session(quiet.socket, CALLERS) as session:
                for b in bundles:
                    api[b.manifest.name] = await _against_bare(b, poster(session, b))
            for b in bundles:
                lean[b.manifest.name] = await _lean_against_bare(b, quiet.socket)
        # With the hub gone neither agent sends its records: the difference is the cost
        # of recording an answer in the store, not of uploading it, and the hub's intake
        # does not share this process's event loop with the callers.
        small = next(b for b in bundles if b.manifest.name == SMALL)
        second = AgentProcess(
            recorder.root, heartbeat_interval=1.0, log=root / "recorder.log", log_level="info"
        )
        agents.callback(second.stop)
        await _models_ready(recorder.socket, names)
        await asyncio.sleep(SETTLE_S)
        async with (
            client_session(quiet.socket, CALLERS) as none,
            client_session(recorder.socket, CALLERS) as every,
        ):
            by_none, by_all = poster(none, small), poster(every, small)
            reported = await alternate([lambda: callers(1, by_none), lambda: callers(1, by_all)])
    return api, lean, rss, dict(zip(("none", "all"), reported, strict=True))


def run(root: Path) -> list[Result]:
    bundles = [read_bundle(p) for p in MODELS]
    inner = {b.manifest.name: asyncio.run(_runner(b)) for b in bundles}
    hop = asyncio.run(_thread_hop())
    http = asyncio.run(bare_http(root, next(b for b in bundles if b.manifest.name == SMALL)))
    api, lean, rss, by_report = asyncio.run(_with_agents(root, bundles))
    floor = rss_of(floor_code(MODELS), SETTLE_S)
    lean_floor = http[3][1]  # the lean client's round trip to the bare protocol, SMALL's body
    same = f"{THREADS} interpreter threads, {INTERPRETERS} interpreter, on every side"
    results = [
        Result(
            "worker thread round trip (no-op), p50",
            hop[0][1],
            hop[1][1],
            "us",
            f"{hop[0][0]:,.0f}/s; the floor of a runner call on a worker thread (its "
            "Workers); raw = the same through loop.run_in_executor",
        ),
        Result(
            "bare aiohttp round trip over a Unix socket, server in its own process, p50",
            http[1][1],
            None,
            "us",
            f"{http[1][0]:,.0f}/s; the local API's client, and an aiohttp server with a "
            "handler that only reads the body and answers, in a process of its own as the "
            "agent is (the agent's server until 2026-12-06)",
        ),
        Result(
            "bare httptools protocol round trip over a Unix socket, own process, p50",
            http[2][1],
            None,
            "us",
            f"{http[2][0]:,.0f}/s; the same client, and an asyncio protocol that parses with "
            "httptools and answers fixed bytes: the floor of a local API call",
        ),
        Result(
            "bare httptools protocol round trip, lean client, own process, p50",
            http[3][1],
            None,
            "us",
            f"{http[3][0]:,.0f}/s; the same server asked by the lean client (leanhttp.py): "
            "the floor under the lean client's local API figures (two processes woken a call)",
        ),
        Result(
            "bare aiohttp round trip over a Unix socket, server in this process, p50",
            http[0][1],
            None,
            "us",
            f"{http[0][0]:,.0f}/s; the same, client and server on one event loop",
        ),
    ]
    for b in bundles:
        name = b.manifest.name
        for where, (raw, alone, loaded) in (("runner", inner[name]), ("local API", api[name])):
            raw_rate, raw_p50, raw_p99 = raw
            rate, p50, p99 = alone
            results += [
                Result(f"infer {name}: bare invoke loop", raw_rate, None, "inf/s", same)
                if where == "runner"
                else Result("  bare invoke loop, beside the agent", raw_rate, None, "inf/s"),
                Result(f"  {where}, 1 caller", rate, raw_rate, "inf/s", "raw = bare loop"),
                Result(f"  {where}, 1 caller, p50", p50, raw_p50, "us"),
                Result(f"  {where}, 1 caller, p99", p99, raw_p99, "us"),
                Result(f"  {where}, {CALLERS} callers", loaded[0], raw_rate, "inf/s"),
                Result(f"  {where}, {CALLERS} callers, p99", loaded[2], None, "us"),
            ]
        (_, raw_p50, _), (_, api_p50, _), _ = api[name]
        (lean_raw, lean_raw_p50, _), (rate, p50, _) = lean[name]
        results += [
            Result(
                "  local API overhead, 1 caller, p50",
                api_p50 - raw_p50,
                None,
                "us",
                f"= local API p50 - bare p50 ({api_p50:,.0f} - {raw_p50:,.0f} us)",
            ),
            Result(
                "  local API, lean client, 1 caller",
                rate,
                lean_raw,
                "inf/s",
                "raw = bare loop, in alternating rounds; the client: leanhttp.py",
            ),
            Result(
                "  local API overhead, lean client, 1 caller, p50",
                p50 - lean_raw_p50,
                None,
                "us",
                f"= p50 - bare p50 ({p50:,.0f} - {lean_raw_p50:,.0f} us)"
                + (
                    f"; of it {p50 - lean_raw_p50 - lean_floor:,.0f} us above the bare protocol's "
                    f"round trip with the same body ({lean_floor:,.0f} us)"
                    if name == SMALL
                    else ""
                ),
            ),
        ]
    none, every = by_report["none"][1], by_report["all"][1]
    results += [
        Result(
            f"flagged answer cost, {SMALL}, p50",
            every - none,
            none,
            "us",
            f"local API, 1 caller, agents offline: p50 with report = all ({every:,.0f} us) "
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
