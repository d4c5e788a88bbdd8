"""The latency a shadow candidate is judged on: CPU time, so a candidate that only waited
for a CPU (it runs at the lowest priority) is not stopped for it, while one that does
more work is; wall time from agents that report no CPU time. On both back-ends.

The answers here are made up (`Inference`s with the timings a device would measure);
tests/unit/test_shadow_cpu.py measures them on the real interpreter.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.inference.runner import Inference
from edge.rollup import Tally
from hub.store import Device, HubStore, StoredModel, shadows
from outpost import rollup
from tests.databases import BACKENDS, database

MODEL, LIVE, CANDIDATE = "m", "1.0.0", "1.1.0"
SAMPLES = 40


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    s = HubStore(database(request, tmp_path))
    yield s
    s.close()


def _answer(latency_ms: float, cpu_ms: float | None, threads: int = 1) -> Inference:
    return Inference("ok", 0.9, [0.9, 0.1], [100, -100], latency_ms, 0.0, cpu_ms=cpu_ms,
                     threads=threads)  # fmt: skip


def _compared(pairs: list[tuple[Inference, Inference]]) -> dict[str, Any]:
    """The `shadow` section of a roll-up after the device compared `pairs`."""
    tally = Tally()
    for live, candidate in pairs:
        tally.shadow(MODEL, LIVE, CANDIDATE, live, candidate)
    return tally.take_shadow()


async def _shadow_rollout(store: HubStore, latency_ratio_max: float) -> int:
    await store.add_device(
        Device(
            device_id="dev-1", profile="generic", labels={"site": "s"}, online=True,
            last_seen=None, last_heartbeat=None, heartbeat_interval=None, agent_version=None,
            capabilities={}, load={}, enrolled_at=1.0, cert_serial="01", cert_not_before=1.0,
            cert_not_after=2.0,
        )
    )  # fmt: skip
    for version in (LIVE, CANDIDATE):
        model = StoredModel(MODEL, version, "ab" * 32, 10, {}, b"doc", b"sig", 1.0, "t")
        assert await store.add_model(model)
    rollout = await store.create_rollout(
        name=MODEL, version=CANDIDATE, selector={"site": "s"}, canary_share=1.0, by="t",
        now=time.time(), mode="shadow",
        criteria={"agreement_min": 0.97, "latency_ratio_max": latency_ratio_max,
                  "min_samples": SAMPLES},
    )  # fmt: skip
    return rollout.id


async def _fold(store: HubStore, section: dict[str, Any]) -> None:
    await store.run(shadows.fold, "dev-1", section, time.time())


async def test_a_candidate_that_waited_for_a_cpu_reads_its_work_and_is_promoted(
    store: HubStore,
) -> None:
    rollout_id = await _shadow_rollout(store, 1.2)
    # The same work on both sides (0.24 ms of CPU); the candidate's wall time is 3.25
    # times the live one's, all of it waiting for a CPU at nice 19.
    await _fold(store, _compared([(_answer(0.25, 0.24), _answer(0.8125, 0.24))] * SAMPLES))

    found = await store.run(shadows.summary, rollout_id)
    assert found is not None
    assert found["latency_basis"] == "cpu"
    assert found["latency_ratio"] == 1.0
    assert found["wall_latency_ratio"] == 3.25
    assert found["live"]["latency_mean_ms"] == found["candidate"]["latency_mean_ms"] == 0.24
    assert found["candidate"]["wall_mean_ms"] == 0.8125
    assert found["live"]["threads"] == found["candidate"]["threads"] == {"1": SAMPLES}

    (judged,) = await store.run(shadows.judge, time.time())
    assert judged.state == "canary", judged.reason
    assert "latency ratio 1.00 (CPU time)" in judged.reason


async def test_a_candidate_doing_more_work_is_stopped(store: HubStore) -> None:
    rollout_id = await _shadow_rollout(store, 1.2)
    # Twice the live one's CPU time, though its wall time happens to be the same.
    await _fold(store, _compared([(_answer(0.5, 0.24), _answer(0.5, 0.48))] * SAMPLES))

    found = await store.run(shadows.summary, rollout_id)
    assert found is not None
    assert (found["latency_basis"], found["latency_ratio"]) == ("cpu", 2.0)
    assert found["wall_latency_ratio"] == 1.0

    (judged,) = await store.run(shadows.judge, time.time())
    assert judged.state == "stopped"
    assert "latency ratio 2.00 (CPU time) > 1.2" in judged.reason


async def test_an_older_agents_roll_up_falls_back_to_wall_time(store: HubStore) -> None:
    rollout_id = await _shadow_rollout(store, 1.2)
    # An agent that measures no CPU time sends the section as it always did.
    old = _compared([(_answer(0.25, None), _answer(0.75, None))] * (SAMPLES // 2))
    key = f"{MODEL}@{CANDIDATE}"
    for field in ("cpu_count", "live_cpu_sum_ms", "candidate_cpu_sum_ms", "live_cpu_ms",
                  "candidate_cpu_ms", "live_threads", "candidate_threads"):  # fmt: skip
        del old[key][field]
    await _fold(store, old)

    found = await store.run(shadows.summary, rollout_id)
    assert found is not None
    assert (found["latency_basis"], found["latency_ratio"]) == ("wall", 3.0)
    assert found["candidate"]["latency_mean_ms"] == found["candidate"]["wall_mean_ms"] == 0.75

    # A newer agent's comparisons are then judged on CPU time, over those that carry it.
    await _fold(store, _compared([(_answer(0.25, 0.2), _answer(0.75, 0.21))] * (SAMPLES // 2)))
    found = await store.run(shadows.summary, rollout_id)
    assert found is not None
    assert found["samples"] == SAMPLES
    assert (found["latency_basis"], found["latency_ratio"]) == ("cpu", 1.05)
    assert found["candidate"]["latency_mean_ms"] == 0.21


async def test_quantiles_are_read_within_their_bucket(store: HubStore) -> None:
    rollout_id = await _shadow_rollout(store, 1.2)
    # Wall 0.3 ms (bucket 0.25-0.5 ms), CPU 8 µs (bucket 7.94-10 µs).
    await _fold(store, _compared([(_answer(0.3, 0.008), _answer(0.3, 0.008))] * SAMPLES))
    found = await store.run(shadows.summary, rollout_id)
    assert found is not None
    side = found["live"]
    # The bucket's bound would read 0.5 ms and 10 µs; within the bucket, its middle.
    assert side["wall_p50_ms"] == 0.375
    assert 0.00794 < side["latency_p50_ms"] < 0.0098
    assert side["wall_p50_ms"] <= side["wall_p99_ms"] < 0.5


def test_a_device_cannot_grow_a_histogram_or_claim_more_cpu_comparisons() -> None:
    into: dict[str, Any] = {}
    rollup.merge_shadow(
        into,
        {"m@2": {"live": "1", "count": 3, "cpu_count": 9,
                 "live_cpu_ms": {"0.01": 3, "0.011": 5, "x": 1},
                 "live_threads": {"2": 3, "999": 1}, "live_latency_ms": {"0.3": 2}}},
    )  # fmt: skip
    got = into["m@2"]
    assert got["cpu_count"] == 3
    assert got["live_cpu_ms"] == {"0.01": 3}
    assert got["live_threads"] == {"2": 3}
    assert got["live_latency_ms"] == {}


def test_cpu_buckets_are_finer_than_latency_buckets() -> None:
    assert rollup.cpu_bucket(0.001) == "0.001"  # le: at most
    assert rollup.cpu_bucket(0.0011) == "0.00126"
    assert rollup.cpu_bucket(0.24) == "0.251"
    assert rollup.cpu_bucket(1e9) == rollup.cpu_bucket(float("nan")) == "+Inf"
    bounds = rollup.CPU_BUCKETS_MS[:-1]
    assert all(1.2 < b / a < 1.32 for a, b in itertools.pairwise(bounds))


async def test_a_verdict_names_unequal_thread_counts(store: HubStore) -> None:
    rollout_id = await _shadow_rollout(store, 1.2)
    await _fold(store, _compared([(_answer(0.15, 0.3, threads=3), _answer(0.5, 0.24))] * SAMPLES))
    found = await store.run(shadows.summary, rollout_id)
    assert found is not None
    assert found["live"]["threads"] == {"3": SAMPLES}
    (judged,) = await store.run(shadows.judge, time.time())
    assert "latency ratio 0.80 (CPU time, live on 3 threads, candidate on 1)" in judged.reason


async def test_a_device_revoked_while_in_shadow_stays_out_when_it_is_promoted(
    store: HubStore,
) -> None:
    """Revoking left a shadow roll-out's rows as they were, and promotion then released
    every row: a revoked canary held the roll-out up for good (it never reports)."""
    rollout_id = await _shadow_rollout(store, 1.2)  # dev-1, the canary
    await store.add_device(
        Device(
            device_id="dev-2", profile="generic", labels={"site": "s"}, online=True,
            last_seen=None, last_heartbeat=None, heartbeat_interval=None, agent_version=None,
            capabilities={}, load={}, enrolled_at=1.0, cert_serial="02", cert_not_before=1.0,
            cert_not_after=2.0,
        )
    )  # fmt: skip
    await store.run(_join, rollout_id, "dev-2")
    await _fold(store, _compared([(_answer(0.25, 0.24), _answer(0.25, 0.24))] * SAMPLES))
    assert await store.revoke_device("dev-1", now=time.time(), by="t") is not None

    (judged,) = await store.run(shadows.judge, time.time())

    assert judged.state == "canary", judged.reason
    assert judged.released == ["dev-2"]  # the canary in the revoked one's place
    rollout = await store.rollout(rollout_id)
    assert rollout is not None
    states = {d.device_id: (d.stage, d.state) for d in rollout.devices}
    assert states == {"dev-1": ("canary", "withdrawn"), "dev-2": ("canary", "released")}


def _join(db: Any, rollout_id: int, device_id: str) -> None:
    """A second device in the shadow roll-out, in its rest stage."""
    db.execute(
        """INSERT INTO rollout_devices (rollout_id, device_id, stage, state, detail,
               released_at, updated_at) VALUES (?, ?, 'rest', 'shadowing', '', NULL, ?)""",
        (rollout_id, device_id, time.time()),
    )
