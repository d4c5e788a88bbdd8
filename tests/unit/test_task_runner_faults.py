"""The agent's task runner where something goes wrong around a task: a damaged task in
the inbox, a claim that fails inside a result's transaction, the runner stopped or its
caller cancelled while an assignment's put is on the store's thread, and the hub giving
a task again while its result waits for room. In each, no task is lost or left held as
running with nothing running it, and no result is kept from the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

import edge.store.inbox
import edge.taskresult
from edge.inference.service import InferenceService
from edge.store import AgentStore, Bounds
from edge.tasks import TaskRunner
from outpost import wire
from outpost.aio import cancel_until_done
from tests.unit.taskrunner_doubles import (
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


def _runner(store: AgentStore, model: GatedModel, told: list[tuple[str, str]]) -> TaskRunner:
    async def notify(updates: list[wire.TaskUpdate]) -> None:
        told.extend((u.task_id, u.state) for u in updates)

    return TaskRunner(
        store, cast(InferenceService, model), slots=1, inbox_capacity=10, notify=notify
    )


def _damage_input(task_id: str) -> Any:
    def damage(db: Any) -> None:
        with db.conn:
            db.execute("UPDATE inbox SET input = X'c1' WHERE task_id = ?", (task_id,))

    return damage


async def test_a_task_whose_stored_input_is_damaged_is_dropped_and_the_rest_run_on(
    store: AgentStore,
) -> None:
    """A pending task whose input no longer decodes failed every claim, and the result
    transactions that claim with them: no result of any task was stored again."""
    model = GatedModel()
    runner = _runner(store, model, [])
    async with running(runner):
        await runner.assign(wire.Tasks(tasks=[assignment("t-0"), assignment("t-1")]))
        await until(lambda: model.running == 1, "t-0 running, t-1 pending")
        await store._write(_damage_input("t-1"))
        model.gate.set()
        await until(lambda: runner.done == 1, "t-0's result stored")
        await until(lambda: runner.queued == 0, "t-1 dropped")
        await runner.assign(wire.Tasks(tasks=[assignment("t-2")]))
        await until(lambda: runner.done == 2, "a later task run")

    assert [r["task_id"] for r in await stored_results(store)] == ["t-0", "t-2"]
    assert await store.inbox.depth() == (0, 0)


async def test_a_result_whose_hand_over_claim_fails_is_stored_without_it(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim of the next task rides in the result's transaction: when it fails, the
    result is stored on its own at once, and the claim loop takes the next task."""
    claims = 0

    def failing(*args: Any) -> Any:
        nonlocal claims
        claims += 1
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(edge.taskresult, "claim_within", failing)
    model = GatedModel()
    model.gate.set()
    runner = _runner(store, model, [])
    async with running(runner):
        await runner.assign(wire.Tasks(tasks=[assignment(f"t-{n}") for n in range(3)]))
        await until(lambda: runner.done == 3, "every task done")

    assert claims >= 1
    assert sorted(r["task_id"] for r in await stored_results(store)) == ["t-0", "t-1", "t-2"]
    assert await store.inbox.depth() == (0, 0)


def _hold_puts(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold each inbox put inside its transaction on the store's thread, until released:
    (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    put_many = edge.store.inbox.put_many

    def held(*args: Any) -> Any:
        entered.set()
        release.wait()
        return put_many(*args)

    monkeypatch.setattr(edge.store.inbox, "put_many", held)
    return entered, release


async def test_an_assignment_put_as_the_runner_stops_is_run_by_the_next_start(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner stops while an assignment's put runs on the store's thread, and the
    session hands it another after: the puts commit, but nothing starts after the stop
    (no run, no word), and the next start runs the tasks."""
    entered, release = _hold_puts(monkeypatch)
    model = GatedModel()
    told: list[tuple[str, str]] = []
    runner = _runner(store, model, told)
    serving = asyncio.create_task(runner.run())
    try:
        await until(ready_to_start(runner), "the claim loop serving, the inbox seen empty")
        assigning = asyncio.create_task(runner.assign(wire.Tasks(tasks=[assignment("t-1")])))
        await until(entered.is_set, "the put in its transaction")
        await cancel_until_done(serving)  # the agent stops
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await assigning
    await until(lambda: model.running == 0, "its early inference cancelled")
    assert await store.inbox.depth() == (0, 1)  # held as running, by no run
    # The session may hand on an assignment after the stop: put, but neither run nor told.
    monkeypatch.undo()
    await runner.assign(wire.Tasks(tasks=[assignment("t-2")]))
    assert (runner._runs, runner.running, told) == (set(), 0, [])
    assert not runner._word._telling
    assert await store.inbox.depth() == (1, 1)

    model.gate.set()
    again = _runner(store, model, told)
    async with running(again):
        await until(lambda: again.done == 2, "the tasks run by the next start")
    assert sorted((r["task_id"], r["attempt"]) for r in await stored_results(store)) == [
        ("t-1", 1),
        ("t-2", 1),
    ]


async def test_an_assignment_is_carried_through_when_its_caller_is_cancelled(
    store: AgentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session cancels its receiving when the link drops, maybe while an
    assignment's put commits: the assignment is carried through, and its task runs
    (it was held as running with nothing running it until the agent restarted)."""
    entered, release = _hold_puts(monkeypatch)
    model = GatedModel()  # answers once the put is in (else it goes in with its result)
    runner = _runner(store, model, [])
    try:
        async with running(runner):
            await until(ready_to_start(runner), "the claim loop serving, the inbox seen empty")
            receiving = asyncio.create_task(runner.assign(wire.Tasks(tasks=[assignment("t-1")])))
            await until(entered.is_set, "the put in its transaction")
            await cancel_until_done(receiving)  # the link dropped
            release.set()
            model.gate.set()
            await until(lambda: runner.done == 1, "the task run all the same")
    finally:
        release.set()

    assert [r["task_id"] for r in await stored_results(store)] == ["t-1"]
    assert await store.inbox.depth() == (0, 0)


async def test_a_task_given_again_while_its_result_waits_for_room_ends_with_the_newer_attempt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's lease lapsed while the result waited for room, and the device took the
    newer attempt for the run it holds: the result carries it, and the task leaves the
    inbox (it stayed held as running, and later attempts were accepted and never run)."""
    monkeypatch.setattr("edge.tasks.FULL_RETRY_S", 0.02)
    async with agent_store(tmp_path / "store.db", Bounds(1, 0, 0)) as store:
        filler = (await store.append("results", [{"kind": "filler"}])).last_seq
        model = GatedModel()
        model.gate.set()
        runner = _runner(store, model, [])
        async with running(runner):
            await until(ready_to_start(runner), "the claim loop serving, the inbox seen empty")
            await runner.assign(wire.Tasks(tasks=[assignment("t-1", 1)]))  # waits for room
            await runner.assign(wire.Tasks(tasks=[assignment("t-1", 2)]))  # the hub again
            await store.acknowledge("results", filler)
            await until(lambda: runner.done == 1, "the result stored")

        ((task_id, attempt),) = [(r["task_id"], r["attempt"]) for r in await stored_results(store)]
        assert (task_id, attempt) == ("t-1", 2)
        assert await store.inbox.depth() == (0, 0)
