"""Eligibility and the score (hub/tasks/allocation.py), on made-up candidates."""

from __future__ import annotations

import collections
import random
from dataclasses import replace
from typing import Any

import msgspec
import pytest

from hub.store.candidates import Candidate
from hub.store.leases import Assigned, Queued
from hub.tasks.allocation import matches, plan, score
from outpost import wire

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
    return msgspec.structs.replace(base, **changes)


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


def test_equal_devices_are_spread_over_tasks_planned_one_at_a_time() -> None:
    # A pass per submitted task, each seeing the same idle devices: the tie-break (the
    # task's hash against each device's) must not send every task to one of them.
    fleet = [device(f"dev-{n:02d}") for n in range(20)]
    picks = collections.Counter(
        device_id for n in range(400) for _, device_id in plan([task(f"tsk-{n:04x}")], fleet)
    )
    assert sum(picks.values()) == 400
    assert len(picks) == 20
    assert min(picks.values()) >= 8  # 20 each if even
    assert max(picks.values()) <= 40


def assert_by_rule(
    queued: list[Queued], candidates: list[Candidate], chosen: list[tuple[str, str]]
) -> None:
    """Each task, in order, went to a device of the best rank among those eligible then
    (weighing every device, as the module's docstring says), or none was eligible."""
    held = {c.device_id: c.held for c in candidates}
    picks = dict(chosen)
    assert len(picks) == len(chosen)  # no task twice
    for t in queued:
        eligible = {
            c.device_id: (score(c, held[c.device_id]), -held[c.device_id])
            for c in candidates
            if matches(t, c) and held[c.device_id] < c.slots and c.device_id not in t.excluded
        }
        if not eligible:
            assert t.task_id not in picks
            continue
        pick = picks[t.task_id]
        assert eligible.get(pick) == max(eligible.values()), t
        held[pick] += 1


@pytest.mark.parametrize("seed", range(40))
def test_the_ranked_pools_pick_a_best_device_for_each_task(seed: int) -> None:
    rng = random.Random(seed)
    other = ("other-model", "2.0.0")
    fleet = [
        device(
            f"dev-{n:03d}",
            labels=rng.choice([{"site": "north"}, {"site": "south"}]),
            models=rng.choice([frozenset({VIB}), frozenset({VIB, other}), frozenset({other})]),
            slots=rng.choice([1, 2, 3, 6]),
            held=rng.choice([0, 0, 1, 2]),
            cpu_percent=rng.choice([5.0, 5.0, 20.0, None, rng.uniform(0, 100)]),  # ties
            latency_ms=rng.choice([None, 5.0]),
        )
        for n in range(rng.randint(1, 60))
    ]
    ids = [d.device_id for d in fleet]
    kinds: list[dict[str, Any]] = [
        {},
        {"target": {"selector": {"site": "south"}}},
        {"model": "other-model", "version": "2.0.0"},
        {"target": {"device": "dev-001"}},
    ]
    queued = [
        task(
            f"tsk-{seed}-{n}",
            excluded=frozenset(rng.sample(ids, min(len(ids), rng.choice([0, 0, 1, 5])))),
            **rng.choice(kinds),
        )
        for n in range(rng.randint(1, 150))
    ]

    chosen = plan(queued, fleet)

    assert_by_rule(queued, fleet, chosen)
    assert chosen  # the seeds all leave some work placeable


def test_tasks_naming_devices_go_to_those_devices_only() -> None:
    fleet = [device(f"dev-{n:02d}", models=frozenset()) for n in range(30)]  # no model
    queued = [task(f"tsk-{n}", target={"device": f"dev-{n:02d}"}) for n in range(0, 30, 3)]
    queued.append(task("tsk-gone", target={"device": "dev-gone"}))  # not a candidate

    chosen = plan(queued, fleet)

    # The operator chose each device: it is asked even without the model, and will say.
    assert chosen == [(f"tsk-{n}", f"dev-{n:02d}") for n in range(0, 30, 3)]


def _assigned(stored_input: bytes) -> Assigned:
    return Assigned(
        device_id="dev-1",
        task_id="tsk-1",
        attempt=1,
        model="vibration-anomaly",
        version="",
        input=stored_input,
        dtype="int8",
        priority=0,
        deadline=1_000.0,
        lease_s=30.0,
    )


def test_an_assignment_carries_its_stored_input_as_the_device_decodes_it() -> None:
    """The hub splices the input as it packed it at submission into the message; the
    device decodes the same nested lists (or bytes) the operator submitted."""
    for given in ([[1, -2, 3], [4, 5, -6]], b"\x01\x02\xff"):
        payload = wire.encode(
            "tasks", wire.Tasks(tasks=[_assigned(msgspec.msgpack.encode(given)).message(10.0)])
        )
        (task,) = wire.decode(payload, kinds=wire.DOWN_KINDS).body.tasks
        assert (task.input, task.deadline_in_s) == (given, 990.0)


def test_a_stored_input_that_breaks_the_contract_is_refused_as_it_is_sent() -> None:
    """Spliced, the input is not walked as the message is made: the check before it
    leaves still refuses one nested deeper than the contract allows (say a row written
    to the database by hand), and the same input one level shallower goes."""
    deep: Any = 0
    for _ in range(wire.MAX_INPUT_DEPTH + 1):
        deep = [deep]
    with pytest.raises(wire.EncodeError, match="nests deeper"):
        wire.encode(
            "tasks", wire.Tasks(tasks=[_assigned(msgspec.msgpack.encode(deep)).message(0.0)])
        )
    wire.encode(
        "tasks", wire.Tasks(tasks=[_assigned(msgspec.msgpack.encode(deep[0])).message(0.0)])
    )
