"""A task's result: its record (its inference's answer, or why it failed) as the results
stream keeps it and the hub receives it, and how a task whose inference ended as it
arrived goes into the inbox with its result, in one commit."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.inference.service import InferenceService, ModelUnavailable, NotAllowed, UnknownModel
from edge.store import AgentStore, StreamFullError, inbox
from edge.store.errors import AppendDeclined
from edge.store.inbox import Claimed, InboxTask, PutOutcome, attempt_of, claim_within, finish
from outpost.sqlite import Database

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # the runner's module (numpy) is imported once a model loads
    from edge.inference.runner import Inference, ModelRunner

    # A task's inference begun while the inbox took it: the runner it runs on, and when
    # it began (time.time()).
    Early = tuple[ModelRunner, asyncio.Future[Inference], float]


def infer_early(service: InferenceService, tasks: list[InboxTask]) -> dict[str, Early]:
    """Begin the inferences of the tasks the inbox is about to take as running, while
    its write commits: an answer is only recorded once its task is in the inbox, and
    an inference changes nothing, so nothing waits for the disk but the result."""
    early: dict[str, Early] = {}
    began = time.time()
    for task in tasks:
        try:
            runner = service.runner(task.model)
        except (NotAllowed, UnknownModel, ModelUnavailable):
            continue  # unusable now: its run says so, as it would have
        inference = asyncio.ensure_future(runner.infer(task.input, task.dtype))
        early[task.task_id] = (runner, inference, began)
    return early


async def result_record(
    service: InferenceService, task: InboxTask, early: Early | None = None
) -> dict[str, Any]:
    """Run `task`'s inference (or await `early`'s) and make its result record: succeeded
    with the answer, or failed with why (a bad input, a broken model). The attempt is
    the one `task` holds; the caller sets a newer one given meanwhile."""
    started = time.time() if early is None else early[2]
    body: dict[str, Any] = {
        "kind": "task",
        "task_id": task.task_id,
        "attempt": task.attempt,
        "model": task.model,
        "started_at": started,
    }
    try:
        if early is None:
            runner = service.runner(task.model)
            answer = await runner.infer(task.input, task.dtype)
        else:
            runner, inference, _ = early
            answer = await inference
        labels = runner.manifest.labels
        m = runner.manifest
        service.shadows.after(task.model, m.version, task.input, task.dtype, answer, m.input)
    except Exception as exc:  # a bad input, a broken model: the task fails, with why
        body.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:512])
        service.tally.error("task_failed")
    else:
        body.update(
            status="succeeded",
            version=runner.manifest.version,
            label=answer.label,
            confidence=round(answer.confidence, 6),
            scores={label: round(s, 6) for label, s in zip(labels, answer.scores, strict=False)},
            latency_ms=round(answer.latency_ms, 3),
        )
    body["finished_at"] = time.time()
    return body


@dataclass
class Put:
    """How a message's assignments went into the inbox: each one's outcome; the future
    of the put's sync (None: synced); the results stored with it (`finished`: their
    tasks ended there) and those made but waiting for room (`records`: started)."""

    outcomes: list[PutOutcome]
    on_disk: asyncio.Future[None] | None
    finished: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


async def put_with_result(
    store: AgentStore, service: InferenceService, task: InboxTask, early: Early, capacity: int
) -> Put:
    """Put `task`, whose inference (`early`) has ended, in the inbox and its result on
    the results stream in one transaction. The result is stored only if the put starts
    the task (a redelivery, a superseded attempt or a full inbox answer as a put
    would), and the task leaves the inbox with it, as a run's result does."""
    record = await result_record(service, task, early)
    put: list[PutOutcome] = []

    def put_first(db: Database) -> bool:
        put[:] = inbox.put_within(db, [task], capacity, time.time(), start=1)
        return put == ["started"]

    def then(db: Database) -> None:
        finish(db, task.task_id, task.attempt)

    try:
        await store.append("results", [record], first=put_first, then=then)
    except AppendDeclined:  # not started, and nothing of its result stored
        return Put(put, None)
    except StreamFullError as exc:  # started: its run appends the result once there is room
        logger.warning("result of %s waits: %s", task.task_id, exc.reason)
        return Put(put, None, records={task.task_id: record})
    return Put(put, None, finished={task.task_id: record})


class Superseded(Exception):
    """The inbox holds a newer attempt of the task than its result carries."""

    def __init__(self, task_id: str, attempt: int) -> None:
        super().__init__(f"attempt {attempt} of {task_id} is held")
        self.task_id = task_id
        self.attempt = attempt


def finish_run(task_id: str, attempt: int, claimed: list[Claimed] | None, db: Any) -> None:
    """A task's result is stored: it leaves the inbox, and (`claimed`) the next pending
    task takes its slot, in the same transaction. Rolled back if the hub gave the task
    again meanwhile (its lease lapsed while the result waited for room): the result
    must carry the newer attempt, which the inbox holds for this run."""
    if not finish(db, task_id, attempt):  # the usual case costs no read of the attempt
        held = attempt_of(db, task_id)
        if held is not None and held > attempt:
            raise Superseded(task_id, held)
    if claimed is not None:
        claimed[:] = [claim_within(db, time.time(), 1)]
