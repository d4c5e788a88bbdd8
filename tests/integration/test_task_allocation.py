"""Work allocation end to end: the real hub, broker and agents running the shipped models,
on both back-ends. Three agents run 300 tasks each exactly once and within their
concurrency; a device lacking the model rejects and the task moves on; a task submitted
while a device has a slot free leaves assigned, and one whose allocation fails is kept
queued; deadlines expire, and cancel works before and after assignment; high-priority
tasks finish ahead of low ones under load.

Every task must end exactly once: the checks read the hub's tasks, their transitions and
the result records the devices uploaded. (Agents killed, partitioned or crashed:
test_task_faults.py; submissions refused and listed: test_task_submission.py.)
"""

from __future__ import annotations

import base64
import collections
import json
import signal
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hub.app import Hub
from hub.tasks import allocation
from outpost.modelbundle import read_bundle
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend, hub_sql  # noqa: F401 - each test on both back-ends
from tests.integration.tasks_support import (
    INPUT,
    TASK_HUB_SETTINGS,
    VIB,
    Starter,
    all_ended,
    ended_once,
    hub_has_caught_up,
    member_starter,
    submit,
    tasks_of,
    vib,
)
from tests.integration.test_store_forward import hub_records
from tests.support import SHIPPED_MODELS, AgentProcess, eventually


@pytest.fixture
def hub_settings() -> str:
    return TASK_HUB_SETTINGS


@pytest.fixture
def start_member(hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]) -> Starter:
    return member_starter(hub, enroll_device, agents)


def task_results(hub: Hub, device_id: str) -> list[dict[str, Any]]:
    return [b for _, b in hub_records(hub, device_id) if b.get("kind") == "task"]


def max_overlap(results: list[dict[str, Any]]) -> int:
    """The most tasks a device ran at the same time, from their start and finish times."""
    edges = sorted(
        [(r["started_at"], 1) for r in results] + [(r["finished_at"], -1) for r in results],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def test_three_agents_run_300_tasks_each_exactly_once_within_their_concurrency(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    members = [
        await start_member("generic"),
        await start_member("raspberry-pi-4"),
        await start_member("x86-gateway"),
    ]
    token = await api.token("operator")
    ids = await submit(api, token, [vib(priority=n % 10) for n in range(300)])

    ended = await all_ended(hub, ids, timeout=90)

    # The ingest counts the results once the transaction that ended their tasks has
    # returned to it: on PostgreSQL another of the store's threads may read them ended
    # before that.
    async def counted() -> bool:
        return hub.parts.metrics.task_results["accepted"] >= 300

    await eventually(counted, timeout=30, what="300 task results counted")
    assert {t.state for t in ended.values()} == {"succeeded"}
    assert all(ended_once(t) for t in ended.values())
    assert all(t.result and t.result["label"] == "bearing_fault" for t in ended.values())
    assert hub.parts.metrics.task_results["accepted"] == 300
    assert hub.parts.metrics.task_results["late"] == 0
    seen: collections.Counter[str] = collections.Counter()
    for m in members:
        results = task_results(hub, m.device_id)
        seen.update(r["task_id"] for r in results)
        device = await hub.parts.store.device(m.device_id)
        assert device is not None
        assert results, f"{m.device_id} ran nothing"
        assert max_overlap(results) <= device.task_slots, m.device_id
    assert seen == collections.Counter(ids)  # one result per task, no more


async def test_a_device_lacking_the_model_rejects_and_the_task_moves_on(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    lacking = await start_member("x86-gateway", models=False)
    having = await start_member("generic")
    # The hub's registry is stale: it believes the device has the models.
    claim_models(hub, lacking.device_id)
    token = await api.token("operator")
    ids = await submit(api, token, [vib() for _ in range(12)])

    ended = await all_ended(hub, ids)

    assert {t.state for t in ended.values()} == {"succeeded"}
    assert {t.device_id for t in ended.values()} == {having.device_id}
    rejected = [e for t in ended.values() for e in t.events if e.state == "rejected"]
    assert rejected, "the device lacking the model was never asked"
    assert all(e.device_id == lacking.device_id for e in rejected)
    assert all("unknown_model" in e.detail for e in rejected)
    assert all(lacking.device_id in t.excluded for t in ended.values() if t.attempt > 1)


async def test_an_input_given_as_the_tensors_bytes_runs_as_the_same_input_in_lists(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    """`input_b64` carries the tensor's bytes end to end (no nested lists on the way):
    int8 as they are, float32 quantized on the device; bytes that fit no input the device
    has fail there, naming their size (the hub holds no manifest of these models)."""
    member = await start_member("generic")
    token = await api.token("operator")
    spec = read_bundle(SHIPPED_MODELS[0]).manifest.input
    int8 = np.array(INPUT, np.int8)
    real = ((int8.astype(np.float32) - spec.zero_point) * spec.scale).astype("<f4")
    as_bytes = {
        "int8": vib(input=None, input_b64=base64.b64encode(int8.tobytes()).decode()),
        "float32": vib(
            input=None, dtype="float32", input_b64=base64.b64encode(real.tobytes()).decode()
        ),
        "short": vib(input=None, input_b64=base64.b64encode(int8.tobytes()[:-3]).decode()),
    }
    ids = await submit(api, token, [vib(), *as_bytes.values()])

    ended = await all_ended(hub, ids)

    lists, int8_bytes, float32_bytes, short = (ended[i] for i in ids)
    for task in (lists, int8_bytes, float32_bytes):
        assert task.state == "succeeded", task.error
        assert task.device_id == member.device_id
        assert task.result is not None
    answers = [(t.result or {}).get("scores") for t in (lists, int8_bytes, float32_bytes)]
    assert answers[0]
    assert answers == [answers[0]] * 3
    assert int8_bytes.input_bytes < lists.input_bytes  # 384 bytes, not 384 msgpack ints
    assert short.state == "failed"
    assert f"input is {int8.size - 3} bytes; the model takes {int8.size} int8 values" in (
        short.error
    )


async def test_a_task_submitted_while_a_device_has_a_slot_free_leaves_assigned(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    """The leading hub queues and assigns a submitted task in one transaction: it is held
    by the device when the submission is answered, queued and assigned at one instant."""
    member = await start_member("generic")
    token = await api.token("operator")
    (task_id,) = await submit(api, token, [vib()])

    task = await hub.parts.store.task(task_id)
    assert task is not None
    assert task.state != "queued", task
    assert task.device_id == member.device_id
    queued, assigned = (e for e in task.events if e.state in ("queued", "assigned"))
    assert (queued.state, assigned.state) == ("queued", "assigned")
    assert assigned.at == queued.at  # the same transaction's clock
    assert assigned.attempt == 1
    (ended,) = (await all_ended(hub, [task_id])).values()
    assert ended.state == "succeeded"
    assert ended_once(ended)


async def test_a_submission_whose_allocation_fails_is_kept_queued(
    hub: Hub, api: ApiClient, start_member: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await start_member("generic")

    def broken(*args: Any) -> list[tuple[str, str]]:
        raise RuntimeError("the planner broke")

    monkeypatch.setattr(allocation, "plan", broken)
    token = await api.token("operator")
    (task_id,) = await submit(api, token, [vib()])  # answered 202 all the same

    task = await hub.parts.store.task(task_id)
    assert task is not None
    assert task.state == "queued"
    monkeypatch.undo()  # the next pass takes it
    (ended,) = (await all_ended(hub, [task_id])).values()
    assert ended.state == "succeeded"


def claim_models(hub: Hub, device_id: str) -> None:
    models = json.dumps(
        [
            {"name": name, "version": "1.0.0", "sha256": "", "state": "ready", "error": ""}
            for name in (VIB, "surface-defect")
        ]
    )
    hub_sql(
        hub.config.database(hub.paths.database),
        "UPDATE devices SET models = ? WHERE device_id = ?",
        (models, device_id),
    )


async def test_deadlines_expire_and_cancel_works_before_and_after_assignment(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    # Slow heartbeats: paused, it must stay online at the hub until its task is assigned.
    member = await start_member("generic", labels={"site": "here"}, heartbeat=5.0)
    token = await api.token("operator")
    nowhere = {"selector": {"site": "nowhere"}}
    expiring, waiting = await submit(
        api,
        token,
        [vib(deadline_s=1, target=nowhere), vib(deadline_s=600, target=nowhere)],
    )

    ended = await all_ended(hub, [expiring])
    assert ended[expiring].state == "expired"
    assert ended[expiring].attempt == 0  # never assigned: no device matched

    reply = await api.call("POST", f"/api/v1/tasks/{waiting}/cancel", token=token)
    assert reply.status == 200, reply.body
    assert reply.body["state"] == "cancelled"
    again = await api.call("POST", f"/api/v1/tasks/{waiting}/cancel", token=token)
    assert again.status == 409
    assert "already ended: cancelled" in again.error["message"]

    # After assignment: the agent is paused, so the task stays assigned until cancelled.
    member.agent.signal(signal.SIGSTOP)
    try:
        (held,) = await submit(api, token, [vib(target={"device": member.device_id})])

        async def assigned() -> bool:
            task = (await tasks_of(hub, [held]))[held]
            return task.state == "assigned"

        await eventually(assigned, timeout=10, what="the task assigned")
        reply = await api.call("POST", f"/api/v1/tasks/{held}/cancel", token=token)
        assert reply.status == 200, reply.body
        assert reply.body["state"] == "cancelled"
    finally:
        member.agent.signal(signal.SIGCONT)

    # Whatever the device does with it now (drop it, or run it: a late result), the
    # task stays cancelled.
    async def settled() -> bool:
        return hub_has_caught_up(hub, member)

    await eventually(settled, timeout=10, what="the agent's store drained")
    final = (await tasks_of(hub, [held]))[held]
    assert final.state == "cancelled"
    assert ended_once(final)


async def test_high_priority_tasks_finish_ahead_of_low_ones_under_load(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    await start_member("generic")  # one task at a time
    token = await api.token("operator")
    # One request: lows sent first on their own would start running before the highs came.
    both = await submit(
        api, token, [vib(priority=0) for _ in range(150)] + [vib(priority=9) for _ in range(20)]
    )
    low, high = both[:150], both[150:]

    ended = await all_ended(hub, low + high, timeout=90)

    assert {t.state for t in ended.values()} == {"succeeded"}
    finish = sorted(ended.values(), key=lambda t: t.finished_at or 0)
    order = {t.task_id: n for n, t in enumerate(finish)}
    last_high = max(order[i] for i in high)
    low_after = sum(order[i] > last_high for i in low)
    assert low_after >= 100, f"only {low_after} low-priority tasks finished after the last high one"
