"""The agent's task runner on a real store: how many tasks run at once, how claims are
batched, and which attempt a result carries when the hub gave its task again mid-run.

The model is a stand-in whose answers wait for the test (the runner's bookkeeping is
under test here; the real interpreter runs tasks in
tests/integration/test_task_allocation.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

import edge.store.durable
import edge.taskword
from edge.inference.service import InferenceService
from edge.store import AgentStore, Bounds
from edge.tasks import TaskRunner
from outpost import wire
from tests.unit.taskrunner_doubles import (
    Answer,
    GatedModel,
    agent_store,
    assignment,
    ready_to_start,
    running,
    stored_results,
    until,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AgentStore]:
    async with agent_store(tmp_path / "store.db") as opened:
        yield opened


async def test_no_more_tasks_run_at_once_than_the_slots_and_each_claim_reports_once(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task is told accepted once its put is on the disk; a claim tells "running"
    once, for the tasks it took that still run after `RUNNING_WORD_AFTER_S`, and
    nothing for those whose result is on its way by then."""
    model = GatedModel()
    sent: list[list[wire.TaskUpdate]] = []

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        sent.append(updates)

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=2, inbox_capacity=10, notify=notify
    )
    monkeypatch.setattr(edge.taskword, "RUNNING_WORD_AFTER_S", 0.01)
    async with running(runner):
        await runner.assign(wire.Tasks(tasks=[assignment(f"t-{n}") for n in range(5)]))
        await until(lambda: model.running == 2, "two tasks running")
        assert (runner.running, runner.queued) == (2, 3)
        await until(lambda: len(sent) == 2, "accepted, then the first claim's running")
        # The later claims' words are due long after their results are appended.
        monkeypatch.setattr(edge.taskword, "RUNNING_WORD_AFTER_S", 1.0)
        model.gate.set()
        await until(lambda: runner.done == 5, "every task done")
        await until(lambda: not runner._word._telling, "every word decided")
        assert model.most == 2

    results = await stored_results(store)
    assert sorted(r["task_id"] for r in results) == [f"t-{n}" for n in range(5)]
    assert all(r["status"] == "succeeded" and r["attempt"] == 1 for r in results)
    # Two messages, in either order (the put's sync and the claim's delay race): every
    # task accepted; the first claim took both slots at once, and the tasks that came
    # later ended before their word was due.
    words = sorted(([(u.task_id, u.state) for u in batch] for batch in sent), key=len)
    assert words == [
        [("t-0", "running"), ("t-1", "running")],
        [(f"t-{n}", "accepted") for n in range(5)],
    ]


async def test_a_result_hands_its_slot_to_the_next_pending_task_in_its_own_transaction(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction that stores a result also claims the next pending task, in the
    order claims run them (priority, then deadline): no claim of its own per task."""
    model = GatedModel()
    claims: list[int] = []
    claim_many = store.inbox.claim_many

    async def counted_claim(limit: int) -> Any:
        claims.append(limit)
        return await claim_many(limit)

    monkeypatch.setattr(store.inbox, "claim_many", counted_claim)
    order: list[str] = []
    gated = model.infer

    async def infer_in_order(data: Any, dtype: str) -> Answer:
        order.append(str(data))
        return await gated(data, dtype)

    monkeypatch.setattr(model, "infer", infer_in_order)

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        pass

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    # t-3 is the most urgent of those waiting: it runs after the one running (the
    # first put, with its slot free), before t-1 and t-2.
    tasks = [
        msgspec.structs.replace(assignment(f"t-{n}"), input=[n], priority=9 if n == 3 else 0)
        for n in range(4)
    ]
    async with running(runner):
        await runner.assign(wire.Tasks(tasks=tasks))
        await until(lambda: model.running == 1, "one task running")
        before = len(claims)
        model.gate.set()
        await until(lambda: runner.done == 4, "every task done")
        assert len(claims) == before  # the others came with the results before them
        assert (runner.running, runner.queued, model.most) == (0, 0, 1)

    assert order == ["[3]", "[0]", "[1]", "[2]"]
    assert sorted(r["task_id"] for r in await stored_results(store)) == [f"t-{n}" for n in range(4)]
    assert await store.inbox.depth() == (0, 0)


async def test_a_task_given_again_while_it_runs_reports_the_newer_attempt(
    store: AgentStore,
) -> None:
    model = GatedModel()

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        pass

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    async with running(runner):
        await runner.assign(wire.Tasks(tasks=[assignment("t-1", attempt=1)]))
        await until(model.started.is_set, "the first attempt running")
        # Its lease lapsed at the hub, which gave it again: the run carries on.
        await runner.assign(wire.Tasks(tasks=[assignment("t-1", attempt=2)]))
        model.gate.set()
        await until(lambda: runner.done == 1, "the task done")

    (result,) = await stored_results(store)
    assert (result["task_id"], result["attempt"]) == ("t-1", 2)
    assert await store.inbox.depth() == (0, 0)


async def test_an_assignment_that_finds_a_free_slot_and_nothing_pending_starts_at_once(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge.taskword, "RUNNING_WORD_AFTER_S", 1.0)  # past its result
    model = GatedModel()
    sent: list[list[wire.TaskUpdate]] = []

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        sent.append(updates)

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    async with running(runner):
        model.gate.set()
        await runner.assign(wire.Tasks(tasks=[assignment("t-0")]))
        await until(lambda: runner.done == 1, "the first task done")
        model.gate = asyncio.Event()
        sent.clear()
        # One slot free, nothing pending: the first goes in running and runs; the
        # second waits for the slot, as a claim takes it.
        await runner.assign(wire.Tasks(tasks=[assignment("t-1"), assignment("t-2")]))
        await until(lambda: model.running == 1, "one task running")
        await until(lambda: sent, "the hub told, once the inbox is on the disk")
        assert [(u.task_id, u.state) for u in sent[0]] == [
            ("t-1", "running"),
            ("t-2", "accepted"),
        ]
        assert (runner.running, runner.queued) == (1, 1)
        model.gate.set()
        await until(lambda: runner.done == 3, "every task done")
        await until(lambda: not runner._word._telling, "every word decided")
        assert model.most == 1

    # t-2's claim said nothing: its result was on its way before its word was due.
    assert [(u.task_id, u.state) for batch in sent[1:] for u in batch] == []
    results = await stored_results(store)
    assert sorted(r["task_id"] for r in results) == ["t-0", "t-1", "t-2"]
    assert await store.inbox.depth() == (0, 0)


async def test_a_task_that_starts_at_once_is_inferred_while_the_inbox_takes_it(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its inference begins before the inbox's write has committed (an inference changes
    nothing); one that outlasts `INLINE_WAIT_S` lets the write go ahead, and its result
    is recorded after, in the transaction that ends it in the inbox."""
    model = GatedModel()
    put_done: list[bool] = []
    inbox_held_at_infer: list[bool] = []
    put_written = store.inbox.put_written

    async def put_and_note(*args: Any, **kwargs: Any) -> Any:
        outcome = await put_written(*args, **kwargs)
        put_done.append(True)
        return outcome

    gated = model.infer

    async def infer_and_note(data: Any, dtype: str) -> Answer:
        inbox_held_at_infer.append(bool(put_done))
        return await gated(data, dtype)

    monkeypatch.setattr(store.inbox, "put_written", put_and_note)
    monkeypatch.setattr(model, "infer", infer_and_note)

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        pass

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    async with running(runner):
        model.gate.set()
        await runner.assign(wire.Tasks(tasks=[assignment("t-0")]))  # pending: claimed
        await until(lambda: runner.done == 1, "the first task done")
        put_done.clear()
        inbox_held_at_infer.clear()
        model.gate = asyncio.Event()  # this inference ends only once the put did
        await runner.assign(wire.Tasks(tasks=[assignment("t-1")]))  # a free slot: starts
        await until(lambda: put_done, "the inbox's write")
        model.gate.set()
        await until(lambda: runner.done == 2, "the second task done")

    assert put_done == [True]
    assert inbox_held_at_infer == [False]
    results = await stored_results(store)
    assert [(r["task_id"], r["status"]) for r in results] == [
        ("t-0", "succeeded"),
        ("t-1", "succeeded"),
    ]
    assert await store.inbox.depth() == (0, 0)


async def test_the_hub_hears_of_a_task_that_started_at_once_only_once_it_is_on_the_disk(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inbox takes it without a sync of its own (its result's synced commit, or the
    sync that follows within milliseconds, takes it to the disk); the hub, which gives
    an assignment no one accepted to another device after its accept timeout, hears of
    it only once it is there."""
    model = GatedModel()
    on_disk: list[asyncio.Future[None]] = []
    put_written = store.inbox.put_written

    async def put_and_keep(*args: Any, **kwargs: Any) -> Any:
        outcomes, done = await put_written(*args, **kwargs)
        on_disk.append(done)
        return outcomes, done

    monkeypatch.setattr(store.inbox, "put_written", put_and_keep)
    told: list[tuple[str, bool]] = []

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        told.extend((u.state, on_disk[-1].done()) for u in updates)

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    async with running(runner):
        await until(ready_to_start(runner), "the claim loop serving, the inbox seen empty")
        await runner.assign(wire.Tasks(tasks=[assignment("t-1")]))
        await until(lambda: told, "the hub told")
        model.gate.set()
        await until(lambda: runner.done == 1, "the task done")
        await until(lambda: not runner._word._telling, "the word decided")

    assert told == [("running", True)]
    assert len(on_disk) == 1
    assert on_disk[0].done()
    (result,) = await stored_results(store)
    assert (result["task_id"], result["status"]) == ("t-1", "succeeded")


async def test_a_claimed_task_is_told_running_only_once_its_put_is_on_the_disk(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending task's put is committed without a sync of its own; its claim's
    "running" is due after `RUNNING_WORD_AFTER_S`, but waits for that sync (slow flash,
    or a failing one): a power cut before it leaves no task, which the hub, told
    "running", would hold until its lease."""
    gate, entered = threading.Event(), threading.Event()
    real_sync = edge.store.durable.sync_file

    def held_sync(path: str) -> None:
        entered.set()
        gate.wait()
        real_sync(path)

    monkeypatch.setattr(edge.store.durable, "sync_file", held_sync)
    monkeypatch.setattr(edge.taskword, "RUNNING_WORD_AFTER_S", 0.0)
    model = GatedModel()
    told: list[tuple[str, str]] = []

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        told.extend((u.task_id, u.state) for u in updates)

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    try:
        async with running(runner):
            # At start the inbox may hold pending tasks: the task goes in pending, and
            # the claim loop claims it.
            await runner.assign(wire.Tasks(tasks=[assignment("t-1")]))
            await until(model.started.is_set, "the task claimed and running")
            await until(entered.is_set, "the put's sync under way")
            for _ in range(20):  # the word, were it not held, goes within a few turns
                await asyncio.sleep(0)
            assert told == []
            gate.set()
            await until(lambda: len(told) == 2, "both words, once the put is on the disk")
            assert sorted(told) == [("t-1", "accepted"), ("t-1", "running")]
            model.gate.set()
            await until(lambda: runner.done == 1, "the task done")
    finally:
        gate.set()


async def test_a_lone_task_whose_inference_ends_at_once_goes_in_with_its_result(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its put and its result are one synced commit (no write of the inbox alone), the
    hub hears of it by its result only, and the inbox keeps it as done: the same
    assignment given again is a redelivery, accepted and not run twice."""
    model = GatedModel()
    model.gate.set()
    puts: list[str] = []
    put_written = store.inbox.put_written

    async def put_and_note(*args: Any, **kwargs: Any) -> Any:
        puts.append("written")
        return await put_written(*args, **kwargs)

    monkeypatch.setattr(store.inbox, "put_written", put_and_note)
    told: list[tuple[str, str]] = []

    async def notify(updates: list[wire.TaskUpdate]) -> None:
        told.extend((u.task_id, u.state) for u in updates)

    runner = TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )
    async with running(runner):
        await until(ready_to_start(runner), "the claim loop serving, the inbox seen empty")
        await runner.assign(wire.Tasks(tasks=[assignment("t-1")]))
        assert runner.done == 1  # stored before `assign` returned
        assert (runner.running, told, puts) == (0, [], [])
        await runner.assign(wire.Tasks(tasks=[assignment("t-1")]))  # given again

    assert told == [("t-1", "accepted")]
    assert runner.done == 1
    (result,) = await stored_results(store)
    assert (result["task_id"], result["attempt"], result["status"]) == ("t-1", 1, "succeeded")
    assert await store.inbox.depth() == (0, 0)


async def test_a_lone_task_whose_result_finds_the_stream_full_runs_on_until_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put commits without its result: the task is in the inbox as running, the hub
    hears "running", and its result is appended once the stream has room."""
    monkeypatch.setattr("edge.tasks.FULL_RETRY_S", 0.02)
    async with agent_store(tmp_path / "store.db", Bounds(1, 0, 0)) as store:
        filler = (await store.append("results", [{"kind": "filler"}])).last_seq
        model = GatedModel()
        model.gate.set()
        told: list[tuple[str, str]] = []

        async def notify(updates: list[wire.TaskUpdate]) -> None:
            told.extend((u.task_id, u.state) for u in updates)

        runner = TaskRunner(
            store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
        )
        async with running(runner):
            await until(ready_to_start(runner), "the claim loop serving, the inbox seen empty")
            await runner.assign(wire.Tasks(tasks=[assignment("t-1")]))
            assert told == [("t-1", "running")]
            assert await store.inbox.depth() == (0, 1)
            assert runner.done == 0
            await store.acknowledge("results", filler)  # room for one
            await until(lambda: runner.done == 1, "the result stored")

        (result,) = await stored_results(store)
        assert (result["task_id"], result["status"]) == ("t-1", "succeeded")
        assert await store.inbox.depth() == (0, 0)
