"""Tasks under faults end to end: the real hub, broker and agents running the shipped
models, on both back-ends. An agent killed with kill -9 mid-run, holding tasks it had
not finished, has them moved to other devices, every task ending once, and when it comes
back with what it had stored its old attempts are only late; a device cut off from the
hub by a link proxy finishes its tasks and reports them later, as its own within the
lease and as late ones once the work had moved on; tasks an agent had accepted before a
crash run after its restart, and one whose deadline passed meanwhile is dropped.

The checks read the hub's tasks and their transitions, and each agent's own store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.store import AgentStore
from edge.store.inbox import InboxTask
from hub.app import Hub
from tests.api_client import ApiClient
from tests.conftest import Enroller
from tests.databases import hub_backend  # noqa: F401 - each test on both back-ends
from tests.integration.tasks_support import (
    INPUT,
    TASK_HUB_SETTINGS,
    VIB,
    Member,
    Starter,
    all_ended,
    ended_once,
    hub_has_caught_up,
    member_starter,
    submit,
    tasks_of,
    vib,
    wait_ready,
)
from tests.linkproxy import LinkProxy
from tests.support import AgentProcess, eventually


@pytest.fixture
def hub_settings() -> str:
    return TASK_HUB_SETTINGS


@pytest.fixture
def start_member(hub: Hub, enroll_device: Enroller, agents: Callable[..., AgentProcess]) -> Starter:
    return member_starter(hub, enroll_device, agents)


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
            await store.inbox.put(
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
        await store.inbox.claim()  # running when the power went
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
