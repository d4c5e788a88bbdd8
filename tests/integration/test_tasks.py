"""Work allocation end to end: the real hub, broker and agents running the shipped models.

Every task must end exactly once: the checks read the hub's tasks, their transitions and
the result records the devices uploaded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.store import AgentStore
from edge.store.inbox import InboxTask
from hub.app import Hub
from hub.store import Task
from hub.tasks import allocation
from outpost.modelbundle import read_bundle
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend, hub_sql  # noqa: F401 - each test on both back-ends
from tests.integration.test_store_forward import hub_records, write_agent_settings
from tests.linkproxy import LinkProxy
from tests.support import SHIPPED_MODELS, AgentProcess, eventually

VIB = "vibration-anomaly"
SAMPLE = read_bundle(SHIPPED_MODELS[0]).sample
assert SAMPLE is not None
INPUT = SAMPLE.input  # int8, bearing_fault


@pytest.fixture
def hub_settings() -> str:
    # The tests poll the API; short accept timeouts keep lapses quick.
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\ntask_accept_timeout_s = 10\n"


@dataclass
class Member:
    paths: DevicePaths
    device_id: str
    agent: AgentProcess


Starter = Callable[..., Any]


@pytest.fixture
def start_member(hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]) -> Starter:
    async def _start(
        profile: str = "generic",
        labels: dict[str, str] | None = None,
        *,
        models: bool = True,
        settings: str = "",
        heartbeat: float = 0.5,
    ) -> Member:
        paths, identity = await enroll_device(profile, labels or {"fleet": "t"})
        if models:
            directory = ModelDirectory(paths.models)
            for folder in SHIPPED_MODELS:
                directory.install(folder)
        write_agent_settings(paths, settings)
        agent = agents(paths, heartbeat_interval=heartbeat)
        member = Member(paths, identity.device_id, agent)
        await wait_ready(hub, member, models=models)
        return member

    return _start


async def wait_ready(hub: Hub, member: Member, *, models: bool = True) -> None:
    async def ready() -> bool:
        assert member.agent.process.poll() is None, member.agent.output()
        device = await hub.parts.store.device(member.device_id)
        return bool(
            device
            and device.online
            and device.task_slots > 0
            and (not models or len(device.models) == 2)
        )

    await eventually(ready, timeout=15, what=f"{member.device_id} ready for tasks")


async def submit(api: ApiClient, token: str, tasks: list[dict[str, Any]]) -> list[str]:
    reply = await api.call("POST", "/api/v1/tasks", token=token, body={"tasks": tasks})
    assert reply.status == 202, reply.body
    ids: list[str] = reply.body["ids"]
    assert len(ids) == len(tasks)
    return ids


async def tasks_of(hub: Hub, ids: list[str]) -> dict[str, Task]:
    found = {}
    for task_id in ids:
        task = await hub.parts.store.task(task_id)
        assert task is not None
        found[task_id] = task
    return found


async def all_ended(hub: Hub, ids: list[str], timeout: float = 60) -> dict[str, Task]:
    ended = ("succeeded", "failed", "expired", "cancelled")

    async def done() -> dict[str, Task]:
        found = await tasks_of(hub, ids)
        return found if all(t.state in ended for t in found.values()) else {}

    result: dict[str, Task] = await eventually(
        done, timeout=timeout, every=0.2, what=f"{len(ids)} tasks ended"
    )
    return result


def task_results(hub: Hub, device_id: str) -> list[dict[str, Any]]:
    return [b for _, b in hub_records(hub, device_id) if b.get("kind") == "task"]


def ended_once(task: Task) -> bool:
    terminal = [
        e for e in task.events if e.state in ("succeeded", "failed", "expired", "cancelled")
    ]
    return len(terminal) == 1


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


def vib(priority: int = 5, **extra: Any) -> dict[str, Any]:
    return {"model": VIB, "input": INPUT, "dtype": "int8", "priority": priority, **extra}


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


@pytest.mark.timeout(300)
async def test_kill_9_of_an_agent_mid_run_reassigns_its_tasks_and_each_ends_once(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    members = [await start_member("x86-gateway") for _ in range(3)]
    token = await api.token("operator")
    # Enough work that the victim still holds some once 30 are done, on a slow machine too.
    ids = await submit(api, token, [vib(priority=n % 3, lease_s=10) for n in range(1000)])
    victim = members[0]

    async def under_way() -> bool:
        return len(await hub.parts.store.tasks_page(states=["succeeded"], limit=1000)) >= 30

    await eventually(under_way, timeout=30, every=0.02, what="30 tasks done")
    # Frozen first, so that it surely dies holding tasks it has not finished: what it
    # holds is read from its own store (a task it finished may still end by its result,
    # sent before the freeze; one it never finished can only be moved to another device).
    held = await freeze_holding_unfinished(victim)
    victim.agent.signal(signal.SIGKILL)
    victim.agent.wait(10)

    ended = await all_ended(hub, ids, timeout=120)
    assert {t.state for t in ended.values()} == {"succeeded"}
    assert all(ended_once(t) for t in ended.values())
    moved = [
        t
        for t in ended.values()
        if any(e.state == "lapsed" and e.device_id == victim.device_id for e in t.events)
    ]
    assert held <= {t.task_id for t in moved}, "a task the killed agent held was not moved"
    assert all(t.device_id != victim.device_id for t in moved)

    # The victim comes back with whatever it had stored: old attempts are only late.
    victim.agent = AgentProcess(
        victim.paths.root, heartbeat_interval=0.5, log=victim.paths.root / "again.log"
    )
    try:
        await wait_ready(hub, victim)

        async def drained() -> bool:
            return hub_has_caught_up(hub, victim)

        await eventually(drained, timeout=20, what="the victim's store drained")
        after = await tasks_of(hub, ids)
        assert {t.state for t in after.values()} == {"succeeded"}
        assert all(ended_once(t) for t in after.values())
        assert all(after[i].result == ended[i].result for i in ids)  # nothing replaced
    finally:
        victim.agent.stop()


async def freeze_holding_unfinished(member: Member, timeout: float = 30) -> set[str]:
    """SIGSTOP the member's agent at a moment it holds tasks it has not finished (resumed
    and frozen again until it does, for up to `timeout` s); return their ids, read from
    its store. Tried again at once after a look that found nothing: the agent runs a
    task in a fraction of a millisecond, so on a loaded machine a look may come between
    its tasks many times over."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        member.agent.signal(signal.SIGSTOP)
        held = unfinished_in_store(member)
        if held:
            return held
        member.agent.signal(signal.SIGCONT)
        await asyncio.sleep(0.01)  # a poll with a deadline: let it take more work meanwhile
    raise AssertionError(f"the agent never held an unfinished task when frozen in {timeout} s")


def unfinished_in_store(member: Member) -> set[str]:
    """Tasks in the agent's inbox that it has not finished (no result appended)."""
    with contextlib.closing(sqlite3.connect(f"file:{member.paths.store}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT task_id FROM inbox WHERE state != 'done'").fetchall()
    return {task_id for (task_id,) in rows}


def hub_has_caught_up(hub: Hub, member: Member) -> bool:
    """The agent's store has nothing unacknowledged in its results stream."""
    with contextlib.closing(sqlite3.connect(f"file:{member.paths.store}?mode=ro", uri=True)) as db:
        (records,) = db.execute("SELECT records FROM streams WHERE stream = 'results'").fetchone()
    return bool(records == 0)


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


@pytest.mark.timeout(300)
async def test_a_partitioned_device_finishes_its_tasks_and_reports_them_later(
    hub: Hub, api: ApiClient, start_member: Starter, tmp_path: Path
) -> None:
    assert hub.parts.broker is not None
    proxy = LinkProxy(hub.config.mqtt_port)
    await proxy.start()
    token = await api.token("operator")
    try:
        member = await start_member(
            "generic", settings=f'broker = "mqtts://127.0.0.1:{proxy.port}"\n', heartbeat=2.0
        )
        # Within the lease: the device hears the hub but the hub hears nothing back. It
        # holds 3 tasks at most (1 running, 2 given ahead).
        proxy.hold_upstream()
        kept = await submit(
            api, token, [vib(lease_s=60, target={"device": member.device_id}) for _ in range(3)]
        )

        async def done_offline() -> bool:
            return device_results(member) >= 3

        await eventually(done_offline, timeout=15, what="results held on the device")
        assert {t.state for t in (await tasks_of(hub, kept)).values()} <= {"assigned"}
        proxy.release()
        ended = await all_ended(hub, kept, timeout=30)
        assert {(t.state, t.device_id, t.attempt) for t in ended.values()} == {
            ("succeeded", member.device_id, 1)
        }

        # Past the lease: the hub gives the work to another device meanwhile, and the
        # partitioned device's results, when they come, are recorded as late.
        await wait_ready(hub, member)
        proxy.hold_upstream()
        # The lease must lapse on the partitioned device, yet be long enough for the other
        # device to run all three within it on a loaded machine: a lapse there too would
        # leave no device the tasks may go to.
        moved = await submit(
            api, token, [vib(lease_s=6, target={"selector": {"fleet": "t"}}) for _ in range(3)]
        )

        async def held_by_member() -> bool:
            return device_results(member) >= 6

        await eventually(held_by_member, timeout=15, what="second results held on the device")

        async def lapsed_on_member() -> bool:
            found = await tasks_of(hub, moved)
            return all(t.state == "queued" for t in found.values())

        await eventually(lapsed_on_member, timeout=15, what="the member's leases lapsed")
        other = await start_member("generic")
        ended = await all_ended(hub, moved, timeout=30)
        assert {(t.state, t.device_id) for t in ended.values()} == {("succeeded", other.device_id)}
        proxy.release()

        async def late_recorded() -> bool:
            found = await tasks_of(hub, moved)
            return all(any(e.state == "late" for e in t.events) for t in found.values())

        await eventually(late_recorded, timeout=30, what="the late results recorded")
        final = await tasks_of(hub, moved)
        assert all(t.device_id == other.device_id and ended_once(t) for t in final.values())
        late = [e for t in final.values() for e in t.events if e.state == "late"]
        assert {(e.device_id, e.attempt) for e in late} == {(member.device_id, 1)}
    finally:
        await proxy.close()


def device_results(member: Member) -> int:
    """Task results the device has written (acknowledged or not)."""
    with contextlib.closing(sqlite3.connect(f"file:{member.paths.store}?mode=ro", uri=True)) as db:
        (last,) = db.execute("SELECT next_seq - 1 FROM streams WHERE stream = 'results'").fetchone()
    return int(last)


async def test_tasks_accepted_before_a_crash_run_after_the_restart(
    hub: Hub, api: ApiClient, start_member: Starter
) -> None:
    # Slow heartbeats: paused, it must stay online at the hub until all three are assigned.
    member = await start_member("generic", heartbeat=5.0)
    token = await api.token("operator")
    member.agent.signal(signal.SIGSTOP)  # it will never answer these assignments itself
    target = {"device": member.device_id}
    ids = await submit(api, token, [vib(lease_s=120, target=target) for _ in range(2)])
    (short,) = await submit(api, token, [vib(lease_s=120, deadline_s=4, target=target)])

    async def assigned() -> bool:
        found = await tasks_of(hub, [*ids, short])
        return all(t.state == "assigned" for t in found.values())

    await eventually(assigned, timeout=10, what="the tasks assigned")
    member.agent.signal(signal.SIGKILL)
    member.agent.wait(10)
    # What the agent had written before it died: both accepted, one of them running;
    # the third accepted too, but its deadline passes before the agent is back.
    store = AgentStore(member.paths.store, {})
    await store.start()
    try:
        for task_id in [*ids, short]:
            task = await hub.parts.store.task(task_id)
            assert task is not None
            await store.inbox_put(
                InboxTask(
                    task_id=task_id,
                    attempt=task.attempt,
                    model=VIB,
                    version="",
                    input=INPUT,
                    dtype="int8",
                    priority=5,
                    deadline=time.time() + (0.5 if task_id == short else 600),
                    lease_until=time.time() + 120,
                ),
                capacity=10,
            )
        await store.inbox_claim()  # running when the power went
    finally:
        await store.close()

    async def short_expired() -> bool:
        return (await tasks_of(hub, [short]))[short].state == "expired"

    await eventually(short_expired, timeout=10, what="the short task's deadline")

    member.agent = AgentProcess(
        member.paths.root, heartbeat_interval=0.5, log=member.paths.root / "again.log"
    )
    try:
        ended = await all_ended(hub, [*ids, short], timeout=30)
        assert {(ended[i].state, ended[i].device_id, ended[i].attempt) for i in ids} == {
            ("succeeded", member.device_id, 1)
        }
        assert ended[short].state == "expired"
        assert all(ended_once(t) for t in ended.values())
        assert "dropped " + short in member.agent.output()  # not run from the inbox
    finally:
        member.agent.stop()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": VIB, "input": [[2**70]]}, "body.input", "cannot be encoded"),
        ({"model": VIB, "input": "x"}, "body.input", "non-empty list"),
        ({"model": VIB, "input": [[1.0] * 20_000] * 1}, "body.input", "over the limit"),
        ({"model": VIB, "input": [[1]], "priority": 10}, "body.priority", "at most 9"),
        ({"model": VIB, "input": [[1]], "colour": "red"}, "body.colour", "unknown key"),
        (
            {"model": VIB, "input": [[1]], "target": {"device": "dev-x", "selector": {"a": "b"}}},
            "body.target",
            "not both",
        ),
        (
            {"model": VIB, "input": [[1]], "target": {"device": "dev-nope"}},
            "body.target.device",
            "no device",
        ),
        ({"tasks": [vib(), {"model": VIB}]}, "body.tasks[1].input", "required"),
        ({"tasks": []}, "body.tasks", "submit 1 to"),
    ],
)
async def test_a_bad_task_is_refused_naming_the_field(
    hub: Hub, api: ApiClient, body: dict[str, Any], field: str, words: str
) -> None:
    token = await api.token("operator")

    reply = await api.call("POST", "/api/v1/tasks", token=token, body=body)

    assert reply.status == 400, reply.body
    assert reply.error["details"]["field"] == field
    assert words in reply.error["message"]
    assert await hub.parts.store.task_counts() == {}  # nothing half-created


async def test_only_operators_submit_and_a_deep_body_is_a_400(hub: Hub, api: ApiClient) -> None:
    viewer = await api.token("viewer")
    reply = await api.call("POST", "/api/v1/tasks", token=viewer, body=vib())
    assert reply.status == 403
    operator = await api.token("operator")
    deep = b'{"model": "m", "input": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    reply = await api.call("POST", "/api/v1/tasks", token=operator, raw=deep)
    assert reply.status == 400
    assert "nested too deeply" in reply.error["message"]


async def test_a_task_no_device_could_run_is_refused_unless_it_may_wait(
    hub: Hub, api: ApiClient
) -> None:
    token = await api.token("operator")
    refused = await api.call("POST", "/api/v1/tasks", token=token, body=vib())
    assert refused.status == 422, refused.body
    assert refused.error["details"]["field"] == "body.model"
    assert (
        f"no enrolled device has the model {VIB}; the fleet has: no models"
        in (refused.error["message"])
    )
    assert await hub.parts.store.task_counts() == {}

    ids = []
    for _ in range(3):
        ids += await submit(api, token, [{**vib(), "wait_for_model": True}])
    cancelled = await api.call("POST", f"/api/v1/tasks/{ids[1]}/cancel", token=token)
    assert cancelled.status == 200
    newest = await api.call(
        "GET", "/api/v1/tasks?state=queued,cancelled&order=newest&limit=2", token=token
    )
    after = newest.body["next_cursor"]
    rest = await api.call(
        "GET", f"/api/v1/tasks?state=queued,cancelled&order=newest&cursor={after}", token=token
    )
    queued = await api.call("GET", "/api/v1/tasks?state=queued&state=running", token=token)
    unknown = await api.call("GET", "/api/v1/tasks?state=queued,done", token=token)

    assert [t["id"] for t in newest.body["items"]] == [ids[2], ids[1]]
    assert [t["id"] for t in rest.body["items"]] == [ids[0]]
    assert [(t["id"], t["waiting"]) for t in queued.body["items"]] == [
        (ids[0], f"no device has the model {VIB}"),
        (ids[2], f"no device has the model {VIB}"),
    ]
    assert [t["waiting"] for t in newest.body["items"]] == [f"no device has the model {VIB}", ""]
    assert unknown.status == 400
    assert "no state 'done'" in unknown.error["message"]
