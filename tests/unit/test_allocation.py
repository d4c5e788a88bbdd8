"""Eligibility and the score (hub/tasks/allocation.py), on made-up candidates."""

from __future__ import annotations

from dataclasses import replace

from hub.store.leases import Candidate, Queued
from hub.tasks.allocation import plan, score

VIB = ("vibration-anomaly", "1.0.0")


def device(name: str, **changes: object) -> Candidate:
    base = Candidate(
        device_id=name,
        labels={"site": "north"},
        models=frozenset({VIB}),
        slots=3,
        concurrency=1,
        held=0,
        cpu_percent=10.0,
        temperature_c=40.0,
        latency_ms=5.0,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def task(name: str = "tsk-1", **changes: object) -> Queued:
    base = Queued(name, "vibration-anomaly", "", 5, 1e12, {}, frozenset())
    return replace(base, **changes)  # type: ignore[arg-type]


def test_an_idle_cool_quick_device_scores_highest() -> None:
    idle = device("a")
    assert score(idle, 0) > score(device("b", cpu_percent=90.0), 0)
    assert score(idle, 0) > score(device("c", temperature_c=80.0), 0)
    assert score(idle, 0) > score(device("d", latency_ms=500.0), 0)
    assert score(idle, 0) > score(idle, 2)


def test_unknown_load_is_not_mistaken_for_idle() -> None:
    unknown = device("a", cpu_percent=None, temperature_c=None)
    assert score(unknown, 0) == score(device("b", cpu_percent=100.0, temperature_c=None), 0)
    assert plan([task()], [unknown, device("b", cpu_percent=50.0)]) == [("tsk-1", "b")]


def test_eligibility_model_version_selector_exclusion_and_room() -> None:
    a, b = device("a"), device("b", labels={"site": "south"})
    assert plan([task(version="2.0.0")], [a, b]) == []
    assert plan([task(target={"selector": {"site": "south"}})], [a, b]) == [("tsk-1", "b")]
    assert plan([task(excluded=frozenset({"a"}))], [a]) == []
    assert plan([task()], [device("a", held=3)]) == []
    assert plan([task(model="other")], [a]) == []
    # A named device is asked even without the model: it will say whether it can.
    assert plan([task(model="other", target={"device": "a"})], [a, b]) == [("tsk-1", "a")]


def test_tasks_fill_free_slots_in_the_order_given() -> None:
    tasks = [task(f"tsk-{n}") for n in range(5)]
    chosen = plan(tasks, [device("a", slots=2), device("b", slots=1)])
    assert [t for t, _ in chosen] == ["tsk-0", "tsk-1", "tsk-2"]
    assert sorted(d for _, d in chosen) == ["a", "a", "b"]
