"""Shadow roll-outs' cost on the live path: the p50 and p99 of live answers (the agent's
inference service, the real interpreter, each shipped model) with a candidate in shadow
on every input, against the same with no shadow, in alternating rounds of the same run.

The issue's bar: with the shadow on, the live p50 within 10 % of shadow off. The
candidate is the live model under another version (the comparison's work is the same
as for any candidate of that size), at the default sample_share (0.1) and at 1, the
worst case: one caller back to back, each answer followed by the candidate's work.

It also reports what the hub would judge the (identical) candidate on: its mean CPU time
per input over the live version's, beside the same ratio in wall time, which the
candidate's lowest CPU priority inflates whenever the machine is busy.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.directory import ModelDirectory
from edge.inference.reporting import Reporting
from edge.inference.service import InferenceService
from edge.store import AgentStore, Bounds
from outpost import wire
from outpost.modelbundle import read_bundle
from tests.bench.common import Result
from tests.support import SHIPPED_MODELS

CALLS = 400  # live answers per round
ROUNDS = 3  # off and on alternate, so drift of the machine hits both
UNBOUNDED = Bounds(0, 0, 0)


def _candidate(source: Path, folder: Path) -> Path:
    """The bundle under version 9.9.9: a candidate with the live model's work."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["version"] = "9.9.9"
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


SHARES = {"off": 0.0, "default": 0.1, "every": 1.0}  # policy shadow.sample_share


async def _rounds(
    service: InferenceService, name: str, value: list[object]
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {mode: [] for mode in SHARES}
    for _ in range(ROUNDS):
        for mode, share in SHARES.items():
            service.shadows.sample_share = share
            for _ in range(CALLS):
                t = time.perf_counter()
                await service.infer(name, value, "int8")
                latencies[mode].append((time.perf_counter() - t) * 1e6)
                await asyncio.sleep(0)  # the shadow's comparison runs between answers
            while service.shadows._running:  # drained before the next round
                await asyncio.sleep(0.001)
    return latencies


async def _measure(root: Path, source: Path) -> tuple[str, dict[str, list[float]], dict[str, Any]]:
    bundle = read_bundle(source)
    name = bundle.manifest.name
    directory = ModelDirectory(root / "models")
    directory.install(source)
    directory.install(_candidate(source, root / "candidate"), activate=False)
    store = AgentStore(root / "store.db", {s: UNBOUNDED for s in wire.STREAMS})
    await store.start()
    service = InferenceService(directory, store, reporting=Reporting("none"))
    await service.start()
    try:
        await service.shadow(name, "9.9.9")
        assert bundle.sample is not None
        value = np.array(bundle.sample.input, np.int8).tolist()
        latencies = await _rounds(service, name, value)
        (compared,) = service.tally.take_shadow().values()
    finally:
        await service.close()
        await store.close()
    return name, latencies, compared


def _q(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


def run(root: Path) -> list[Result]:
    results = []
    for i, source in enumerate(SHIPPED_MODELS):
        folder = root / f"m{i}"
        folder.mkdir()
        name, lat, compared = asyncio.run(_measure(folder, source))
        off50, off99 = _q(lat["off"], 0.5), _q(lat["off"], 0.99)
        n, cpu_n = compared["count"], compared["cpu_count"]
        results += [
            Result(f"shadow {name}: live p50, no shadow", off50, None, "us"),
            Result("  live p50, shadow on 10 % (default)", _q(lat["default"], 0.5), off50, "us",
                   "raw = no shadow"),
            Result("  live p99, shadow on 10 % (default)", _q(lat["default"], 0.99), off99, "us"),
            Result("  live p50, shadow on every input", _q(lat["every"], 0.5), off50, "us",
                   f"{n:,} inputs compared in all"),
            Result("  live p99, shadow on every input", _q(lat["every"], 0.99), off99, "us"),
            Result("  candidate CPU time per input (judged)",
                   compared["candidate_cpu_sum_ms"] * 1000 / cpu_n,
                   compared["live_cpu_sum_ms"] * 1000 / cpu_n, "us", "raw = live, same inputs"),
            Result("  candidate wall time per input",
                   compared["candidate_latency_sum_ms"] * 1000 / n,
                   compared["live_latency_sum_ms"] * 1000 / n, "us", "raw = live, same inputs"),
        ]  # fmt: skip
    return results
