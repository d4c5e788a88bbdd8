"""A runner's worker threads (edge/inference/workers.py): results, errors, cancelled
callers, names, the initializer, and a shutdown that lets given jobs finish."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edge.inference.workers import Workers


def _name_and(value: int) -> tuple[str, int]:
    return threading.current_thread().name, value


async def test_a_job_runs_on_a_named_worker_and_its_result_or_error_comes_back() -> None:
    seen: list[str] = []
    workers = Workers(2, "infer-m", initializer=lambda: seen.append("started"))
    assert not any(t.name.startswith("infer-m") for t in threading.enumerate())  # lazily
    try:
        name, value = await workers.submit(_name_and, 7)
        assert (name.startswith("infer-m_"), value) == (True, 7)
        with pytest.raises(ZeroDivisionError):
            await workers.submit(lambda: 1 / 0)
        # Both threads ran the initializer, once each.
        results = await asyncio.gather(*(workers.submit(_name_and, n) for n in range(20)))
        assert [v for _, v in results] == list(range(20))
        assert seen == ["started", "started"]
    finally:
        workers.shutdown()
    assert not any(t.name.startswith("infer-m") for t in threading.enumerate())


async def test_a_cancelled_caller_leaves_the_workers_serving() -> None:
    workers = Workers(1, "infer-c")
    release = threading.Event()
    try:
        held = workers.submit(release.wait, 30)
        ran: list[int] = []
        skipped = workers.submit(ran.append, 1)  # waits behind the held job
        held.cancel()
        skipped.cancel()  # before it started: it never runs
        release.set()  # the held job ends after its caller gave up: its outcome is dropped
        assert await asyncio.wait_for(workers.submit(_name_and, 1), 30) == ("infer-c_0", 1)
        assert ran == []
    finally:
        workers.shutdown()


async def test_shutdown_lets_the_jobs_already_given_finish() -> None:
    workers = Workers(1, "infer-s")
    done: list[int] = []
    release = threading.Event()
    workers.submit(release.wait, 30)
    later = [workers.submit(done.append, n) for n in range(3)]
    release.set()
    await asyncio.to_thread(workers.shutdown)
    assert done == [0, 1, 2]
    await asyncio.gather(*later)
    with pytest.raises(RuntimeError, match="shut down"):
        workers.submit(int)
