"""Tasks from the hub: accept or reject each assignment, keep it in the store's inbox,
run it on the local models, and put its result on the results stream.

The result goes through store and forward like everything else, so a task finished
offline reaches the hub when the link returns; it carries the assignment's attempt (the
fencing token), and the hub keeps the first valid result. The inbox survives restarts.
Up to `slots` tasks run at once, so the device never runs more than its profile allows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from edge.inference.service import InferenceService
from edge.store import AgentStore, StoreReadError, StoreWriteError, StreamFullError
from edge.store.inbox import Claimed, InboxTask
from edge.taskrefusal import refusal
from edge.taskresult import Put, Superseded, finish_run, infer_early, put_with_result, result_record
from edge.taskword import Notify, TaskWord
from outpost import backoff, schema, wire
from outpost.aio import cancel_until_done, supervise, taken

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edge.taskresult import Early

FULL_RETRY_S = 2.0  # a full results stream: try the append again after this long
CLAIM_RETRY_S = 1.0  # after a surprise, claims start again after this long
CLAIM_RETRY_CAP_S = 30.0  # a failing disk: claims back off up to this
# How long a lone assignment that starts at once waits for its inference before its put:
# one that ends by then is put with its result, one commit where there were two (a put
# and its round trip take about a millisecond; a longer inference overlaps the put).
INLINE_WAIT_S = 0.002
# A refusal's reason quotes exception texts (a model's load failure, a disk error) of any
# length: cut here, where it is made, to what the wire carries.
REASON_LIMIT = schema.max_len(wire.TaskUpdate, "reason")


class TaskRunner:
    def __init__(
        self,
        store: AgentStore,
        inference: InferenceService,
        *,
        slots: int,
        inbox_capacity: int,
        notify: Notify,
    ) -> None:
        self._store = store
        self._inference = inference
        self.slots = slots
        self.capacity = inbox_capacity  # held at most, running and waiting (0: no limit)
        self.allowed_models: frozenset[str] = frozenset()  # empty: any (set by policy)
        # Why new work is refused now (CPU or temperature over the policy's caps), or None.
        self.overloaded: Callable[[], str | None] = lambda: None
        self._work = asyncio.Event()
        # The newest attempt the inbox took of each task, from `assign`: a task the hub
        # gave again while it ran carries the newer attempt in its result.
        self._attempts: dict[str, int] = {}
        self.running = 0
        self.queued = 0  # pending in the inbox, as of the last change seen here
        # Whether the inbox may hold pending tasks: after a claim that left none, a run
        # that ends has nothing to claim, and a claim is a transaction on the store.
        # `_puts` counts assignments taken, so one taken while a claim ran is not missed.
        self._maybe_pending = True
        self._puts = 0
        self._serving = False  # the claim loop runs: assignments may start at once
        self._stopped = False  # the claim loop ended: nothing starts any more
        self._runs: set[asyncio.Task[None]] = set()
        self._assigning: set[asyncio.Task[None]] = set()
        self._word = TaskWord(notify)  # what the hub hears, once on the disk
        self.done = 0  # tasks run to an end, succeeded or failed
        self.failed = 0

    async def run(self) -> None:
        """Recover the inbox, then run up to `slots` tasks at once until cancelled."""
        try:
            again = await self._store.inbox.recover()
        except StoreWriteError as exc:  # they stay as they are until a start can write
            logger.warning("tasks interrupted by the last stop not recovered: %s", exc.reason)
            again = 0
        if again:
            logger.info("%d tasks interrupted by the last stop run again", again)
        await self._refresh_depth()
        self._work.set()
        await supervise({"agent.task-claims": self._claim_loop()})

    async def assign(self, body: wire.Tasks) -> None:
        """Accept or reject each assignment; accepted ones are in the inbox (on disk)
        before the hub hears so. Carried through if the caller is cancelled (a lost
        link): a put may commit after that, and its tasks must run (see run's stop)."""
        assigning = asyncio.create_task(self._assign(body), name="agent.task-assign")
        self._assigning.add(assigning)
        assigning.add_done_callback(self._assigning.discard)
        await asyncio.shield(assigning)

    async def _assign(self, body: wire.Tasks) -> None:
        now = time.time()
        busy = self.overloaded()
        reasons = {
            a.task_id: refusal(a, self._inference, self.allowed_models, busy) for a in body.tasks
        }
        wanted = [
            InboxTask(
                task_id=a.task_id,
                attempt=a.attempt,
                model=a.model,
                version=a.version,
                input=a.input,
                dtype=a.dtype,
                priority=a.priority,
                deadline=now + a.deadline_in_s,
                lease_until=now + a.lease_s,
            )
            for a in body.tasks
            if reasons[a.task_id] is None
        ]
        # With nothing pending, new assignments that fit the free slots go in as running
        # and start here: a claim would only take them back out, a transaction and a
        # message to the hub later (they are told "running" instead of "accepted").
        wanted.sort(key=lambda t: (-t.priority, t.deadline))  # the order claims run them
        start = 0
        if self._serving and not self._maybe_pending:
            start = min(len(wanted), max(0, self.slots - self.running))
        self.running += start  # held while the put runs, so no claim takes them too
        started: list[InboxTask] = []
        early: dict[str, Early] = {}
        put = Put([], None)
        if wanted:  # one transaction for the whole message
            full = f"full: {self.capacity} tasks held"
            early = infer_early(self._inference, wanted[:start])
            try:
                put = await self._put(wanted, start, early)
            except StoreWriteError as exc:  # not on disk, so not accepted: the hub moves on
                put.outcomes, full = ["full"] * len(wanted), f"full: {exc.reason}"
            except BaseException:
                self.running -= start  # nothing started: the slots are free again
                for _, inference, _ in early.values():
                    inference.cancel()
                raise
            for task, outcome in zip(wanted, put.outcomes, strict=True):
                if task.task_id in put.finished:
                    continue  # ended already: its result tells the hub
                if outcome in ("accepted", "started"):
                    self._attempts[task.task_id] = task.attempt
                if outcome == "started":
                    started.append(task)
                elif outcome == "full":
                    reasons[task.task_id] = full
                elif outcome == "superseded":
                    reasons[task.task_id] = "superseded: a newer attempt of this task is held"
        self.running -= start - len(started)
        if self._stopped:  # the agent stops: the next start runs what the inbox holds
            self.running -= len(started)
            for _, inference, _ in early.values():
                inference.cancel()
            return
        running = {t.task_id for t in started}
        updates = []
        for a in body.tasks:
            if a.task_id in put.finished:
                continue
            reason = wire.clip(reasons[a.task_id] or "", REASON_LIMIT)
            state: Literal["accepted", "rejected", "running"] = "rejected" if reason else "accepted"
            if reason:
                logger.info("rejected %s attempt %d: %s", a.task_id, a.attempt, reason)
                self._inference.tally.error("task_rejected")
            elif a.task_id in running:
                state = "running"  # which says accepted too
            updates.append(
                wire.TaskUpdate(
                    task_id=a.task_id,
                    attempt=a.attempt,
                    state=state,
                    reason=reason,
                )
            )
        waiting = sum(u.state == "accepted" for u in updates)
        if waiting:  # pending now until claimed; the next claim counts them exactly
            self.queued += waiting
            self._maybe_pending = True
        self._puts += 1
        for task_id, record in put.finished.items():
            early.pop(task_id, None)
            self._ended(record)
        for task in started:
            made = put.records.get(task.task_id)
            self._start(task, counted=True, early=early.pop(task.task_id, None), record=made)
        for _, inference, _ in early.values():  # not taken after all: its answer is dropped
            inference.add_done_callback(taken)  # its outcome is not wanted
        self._work.set()
        if not updates:
            return
        if put.on_disk is None:
            await self._word.notify(updates)
        else:
            self._word.once_on_disk(put.on_disk, updates)

    async def _put(self, wanted: list[InboxTask], start: int, early: dict[str, Early]) -> Put:
        """Put the assignments in the inbox, answered once committed, with the future of
        its sync (the hub hears of them once that is done: see `TaskWord`; usually a
        result's synced commit takes the put to the disk first). A lone assignment that
        starts at once, whose inference ends within `INLINE_WAIT_S`, goes in with its
        result instead: one synced commit, where a put and then a result were two."""
        if start == 1 and len(wanted) == 1 and (begun := early.get(wanted[0].task_id)):
            done, _ = await asyncio.wait([begun[1]], timeout=INLINE_WAIT_S)
            if done:
                return await put_with_result(
                    self._store, self._inference, wanted[0], begun, self.capacity
                )
        outcomes, on_disk = await self._store.inbox.put_written(
            wanted, capacity=self.capacity, start=start
        )
        return Put(outcomes, on_disk)

    async def cancel(self, body: wire.Cancel) -> None:
        try:
            outcome = await self._store.inbox.cancel(body.task_id, body.attempt)
        except StoreWriteError as exc:  # it runs on; its result will come back late
            outcome = f"not cancelled: {exc.reason}"
        logger.info("task %s cancelled by the hub: %s", body.task_id, outcome)
        self._attempts.pop(body.task_id, None)
        await self._refresh_depth()

    async def _claim_loop(self) -> None:
        """Claim pending tasks for the free slots, each claim one transaction for as many
        as are free, and run each claimed task beside the others.

        One loop claims for every slot: slot workers that each claimed for themselves
        all woke on every new assignment and all but one claimed nothing, each of those
        a write transaction on the store's one thread."""
        failures = 0
        self._serving = True
        try:
            while True:
                # Cleared before looking: an assignment put (or a run ended) after the
                # look sets it again, so no wake-up is lost between the look and the wait.
                self._work.clear()
                free = self.slots - self.running  # not len(self._runs): see _run_one
                if free <= 0 or not self._maybe_pending:
                    await self._work.wait()
                    continue
                puts = self._puts
                try:
                    claimed = await self._store.inbox.claim_many(free)
                    failures = 0
                except (StoreWriteError, StoreReadError) as exc:  # a failing disk: wait
                    wait = backoff.delay(failures, cap=CLAIM_RETRY_CAP_S, base=2.0) + 1.0
                    failures += 1
                    logger.warning("task claims: %s; retrying in %.0f s", exc.reason, wait)
                    await asyncio.sleep(wait)
                    continue
                except Exception:  # a surprise: not the agent's end
                    logger.exception("task claims: retrying in %.0f s", CLAIM_RETRY_S)
                    await asyncio.sleep(CLAIM_RETRY_S)
                    continue
                self._took(claimed, puts)
                if not claimed.tasks:
                    await self._work.wait()
                    continue
                for task in claimed.tasks:
                    self._start(task, counted=False)
        finally:
            self._serving = False  # no run hands its slot on from here (see recover)
            self._stopped = True  # nor does an assignment start one
            while self._assigning:
                await cancel_until_done(self._assigning.pop())
            while self._runs:  # a run may have started another meanwhile: until none
                await cancel_until_done(self._runs.pop())
            await self._word.close()

    def _took(self, claimed: Claimed, puts: int) -> None:
        """Note what a claim took (`puts`: assignments taken before it began): what is
        still pending, the stale tasks it dropped; the hub hears of the tasks it started
        once they have run a while (`TaskWord.once_running`)."""
        self.queued = claimed.pending
        self._maybe_pending = claimed.pending > 0 or self._puts != puts
        for stale in claimed.stale:
            logger.info("dropped %s: its deadline or lease passed before it ran", stale.task_id)
            self._inference.tally.error("task_dropped")
            self._attempts.pop(stale.task_id, None)
        for task_id in claimed.damaged:  # the hub gives it again after its lease
            logger.warning("dropped %s: its input in the store does not decode", task_id)
            self._inference.tally.error("task_dropped")
            self._attempts.pop(task_id, None)
        if claimed.tasks:
            self._word.once_running(
                [
                    wire.TaskUpdate(task_id=t.task_id, attempt=t.attempt, state="running")
                    for t in claimed.tasks
                ]
            )

    def _start(
        self,
        task: InboxTask,
        *,
        counted: bool,
        early: Early | None = None,
        record: dict[str, Any] | None = None,
    ) -> None:
        """Run `task` beside the others (`counted`: its slot is in `running` already;
        `early`: its inference, begun while the inbox took it; `record`: its result,
        made already)."""
        if not counted:
            self.running += 1
        run = asyncio.create_task(self._run_one(task, early, record), name="agent.task")
        self._runs.add(run)
        run.add_done_callback(self._runs.discard)

    async def _run_one(
        self, task: InboxTask, early: Early | None, record: dict[str, Any] | None
    ) -> None:
        following: list[InboxTask] = []
        try:
            following = await self._run(task, early, record)
        except Exception:  # a surprise in one task: not the agent's end
            logger.exception("task %s: its run failed", task.task_id)
        finally:
            if following and self._serving:  # the slot goes to the task its result took
                self._start(following[0], counted=True)
            else:
                # Counted free here, before the wake-up: the run's task leaves `runs`
                # only in a done callback, which the woken claim loop may run before.
                self.running -= 1
                self._work.set()

    async def _run(
        self, task: InboxTask, early: Early | None = None, record: dict[str, Any] | None = None
    ) -> list[InboxTask]:
        """Run `task` and store its result; return the pending task the result's
        transaction claimed for the slot it frees (none if none waits): a claim of its
        own was another transaction and trip to the store's thread for every task of a
        busy device."""
        body = record if record is not None else await result_record(self._inference, task, early)
        # The hub may have given this task again while it ran (a lapsed lease): the
        # inbox then holds the newer attempt, which is the one the result must carry.
        # Every attempt the inbox took went through `assign`, which noted it here.
        attempt = max(task.attempt, self._attempts.pop(task.task_id, 0))
        claimed: list[Claimed] = []  # filled in the transaction, if it claims
        hand_on = True
        while True:
            body["attempt"] = attempt
            self._word.answering(task.task_id)  # the result tells the hub of it
            puts = self._puts
            claimed.clear()  # a transaction rolled back claimed nothing
            box = claimed if hand_on and self._maybe_pending else None
            try:
                await self._store.append(
                    "results", [body], then=partial(finish_run, task.task_id, attempt, box)
                )
                break
            except (StreamFullError, StoreWriteError) as exc:
                cause = exc.__cause__
                if isinstance(cause, Superseded) and cause.task_id == task.task_id:
                    attempt = cause.attempt  # given again as it waited
                    continue
                if box is not None and isinstance(exc, StoreWriteError):
                    hand_on = False  # the claim may be what failed: the result goes first
                    continue
                # Kept in the inbox (running) until there is room: nothing is lost.
                logger.warning("result of %s waits: %s", task.task_id, exc.reason)
                self._word.answering(task.task_id, appending=False)
                await asyncio.sleep(FULL_RETRY_S)
        following = claimed[0].tasks if claimed else []
        if claimed:
            self._took(claimed[0], puts)
        self._ended(body)
        self._attempts.pop(task.task_id, None)  # a newer attempt noted while it was saved
        return following

    def _ended(self, record: dict[str, Any]) -> None:
        """A task's result is stored."""
        self.done += 1
        if record["status"] == "failed":
            self.failed += 1

    async def _refresh_depth(self) -> None:
        try:
            self.queued, _ = await self._store.inbox.depth()
        except StoreReadError as exc:  # a gauge: the last value stands until the next look
            logger.warning("task queue depth not read: %s", exc.reason)

    def load(self) -> wire.TaskLoad:
        return wire.TaskLoad(queued=self.queued, running=self.running)
