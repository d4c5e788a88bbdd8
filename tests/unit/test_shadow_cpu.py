"""CPU time on the real interpreter: a shadow candidate at the lowest priority, on a
machine kept busy by other processes, reads the live version's CPU time when it does
the same work (its wall time is whatever the wait for a CPU was), and more when it does
more; an interpreter's own threads are counted with the worker's.

Figures are asserted as ratios of the same work on one machine, never as speeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.inference.directory import ModelDirectory
from edge.inference.reporting import Reporting
from edge.inference.runner import ModelRunner
from edge.inference.runtime import Runtime, choose_runtime
from edge.inference.service import InferenceService
from edge.inference.tensors import Prepared, prepare_input
from edge.rollup import Tally
from edge.store import STREAMS, AgentStore, Bounds
from outpost.modelbundle import read_bundle
from tests.support import SHIPPED_MODELS, eventually

VIBRATION, SURFACE = SHIPPED_MODELS  # ~10 µs and ~250 µs of work per input
COMPARED = 30


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return choose_runtime()


@pytest.fixture
def busy() -> Iterator[None]:
    """Every CPU kept busy by a process at normal priority: a thread at nice 19 then
    waits for a CPU far longer than it works."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(len(os.sched_getaffinity(0)))
    ]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def _runner(
    runtime: Runtime, folder: Path, *, background: bool = False, threads: int = 1
) -> ModelRunner:
    runner = ModelRunner(
        read_bundle(folder),
        runtime,
        num_threads=threads,
        interpreters=1,
        queue_limit=4,
        inline_below_s=0.0,  # on its worker thread, as a candidate of this size runs
        background=background,
    )
    runner.load()
    return runner


def _sample(runner: ModelRunner) -> Any:
    assert runner.bundle.sample is not None
    return runner.bundle.sample.input


async def _compare(live: ModelRunner, candidate: ModelRunner) -> dict[str, Any]:
    """Each side answers its own sample `COMPARED` times; the comparison's section."""
    tally = Tally()
    for _ in range(COMPARED):
        a = await live.infer(_sample(live), "int8")
        b = await candidate.infer(_sample(candidate), "int8")
        tally.shadow("m", "1", "2", a, b)
    (section,) = tally.take_shadow().values()
    assert section["cpu_count"] == COMPARED
    return dict(section)


def _ratios(section: dict[str, Any]) -> tuple[float, float]:
    """(CPU time ratio, wall time ratio), candidate over live."""
    cpu = section["candidate_cpu_sum_ms"] / section["live_cpu_sum_ms"]
    wall = section["candidate_latency_sum_ms"] / section["live_latency_sum_ms"]
    return cpu, wall


async def test_an_identical_candidate_waiting_for_cpu_reads_a_ratio_near_one(
    runtime: Runtime, busy: None
) -> None:
    live = _runner(runtime, SURFACE)
    candidate = _runner(runtime, SURFACE, background=True)
    try:
        cpu, wall = _ratios(await _compare(live, candidate))
    finally:
        live.close()
        candidate.close()
    print(f"identical candidate at nice 19, every CPU busy: CPU {cpu:.2f}x, wall {wall:.2f}x")
    # Preemption costs it cold caches, never the wait itself: alone here it read
    # 0.95-1.07x, and 1.00-1.87x in other runs, the other test worker busy beside the
    # spinners (its wall time 48-355x): the wait counted would read as the wall does.
    # In a whole run the live side waits for a CPU too (three other workers at its own
    # priority), which brought the wall ratio down to 9.4x once: hence a third of it.
    assert 0.67 < cpu < 3.0, (cpu, wall)
    assert cpu < wall / 3, (cpu, wall)


async def test_a_candidate_doing_more_work_reads_a_ratio_above_one(
    runtime: Runtime, busy: None
) -> None:
    live = _runner(runtime, VIBRATION)
    candidate = _runner(runtime, SURFACE, background=True)
    try:
        cpu, wall = _ratios(await _compare(live, candidate))
    finally:
        live.close()
        candidate.close()
    print(f"a larger candidate at nice 19, every CPU busy: CPU {cpu:.2f}x, wall {wall:.2f}x")
    assert cpu > 2, (cpu, wall)  # a 96x96 image model against a 64-value window


def test_an_interpreters_own_threads_are_counted(runtime: Runtime) -> None:
    """At 2 threads the worker does part of the work and LiteRT's own thread the rest:
    the CPU time is both, not the worker's share (about half)."""
    one = _runner(runtime, SURFACE, threads=1)
    two = _runner(runtime, SURFACE, threads=2)
    try:
        started = time.perf_counter()
        cpu = {}
        for runner in (one, two):
            answers = [runner.run_blocking(_prepared(runner), started) for _ in range(COMPARED)]
            assert {a.threads for a in answers} == {runner.num_threads}
            assert all(a.cpu_ms is not None for a in answers)
            cpu[runner.num_threads] = sum(a.cpu_ms or 0.0 for a in answers)
    finally:
        one.close()
        two.close()
    assert cpu[2] > 0.8 * cpu[1], cpu


def _prepared(runner: ModelRunner) -> Prepared:
    return prepare_input(_sample(runner), "int8", runner.manifest.input)


async def test_a_live_model_counts_cpu_only_while_a_candidate_is_compared(tmp_path: Path) -> None:
    """Reading the CPU clocks costs more than a small model's inference, and only a
    shadow comparison uses the reading: a live answer carries it while a candidate is
    in shadow for its model (every compared pair has both sides), and not before or
    after."""
    name = read_bundle(VIBRATION).manifest.name
    directory = ModelDirectory(tmp_path / "models")
    directory.install(VIBRATION)
    candidate = tmp_path / "candidate"
    shutil.copytree(VIBRATION, candidate)
    manifest = json.loads((candidate / "model.json").read_text())
    (candidate / "model.json").write_text(json.dumps({**manifest, "version": "9.9.9"}))
    directory.install(candidate, activate=False)
    store = AgentStore(tmp_path / "store.db", {s: Bounds(0, 0, 0) for s in STREAMS})
    await store.start()
    service = InferenceService(directory, store, reporting=Reporting("none"))
    await service.start()
    value = read_bundle(VIBRATION).sample.input  # type: ignore[union-attr]
    try:
        alone = await service.infer(name, value, "int8")
        await service.shadow(name, "9.9.9")
        service.shadows.sample_share = 1.0
        compared = [await service.infer(name, value, "int8") for _ in range(5)]

        async def compared_all() -> bool:  # the comparisons run after each answer
            return not service.shadows._running

        await eventually(compared_all, timeout=60, every=0.01, what="the shadow comparisons")
        await service.shadows.drop(name)
        after = await service.infer(name, value, "int8")
        (section,) = service.tally.take_shadow().values()
    finally:
        await service.close()
        await store.close()
    assert (alone.inference.cpu_ms, after.inference.cpu_ms) == (None, None)
    assert all(o.inference.cpu_ms is not None for o in compared)
    assert section["cpu_count"] == section["count"] == 5
