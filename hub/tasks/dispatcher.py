"""The dispatcher: allocation passes, and sending assignments and cancellations.

A pass runs when something changed (a device said hello, a rejection, a result that
frees a slot) and at least every `PERIOD_S` (leases and deadlines lapse on their own).
Each pass is one store transaction (`HubStore.allocate`): the database holds every
lease, so a hub that restarts picks up where it was. Tasks submitted to the replica that
leads are queued and allocated in one transaction (`submit`); another replica queues
them and the leader's next pass takes them. Assignments are published after the
transaction; one that is lost (link down, device gone) is not accepted in time and goes
back to the queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

from hub.config import TASK_ENVELOPE_BYTES, HubConfig
from hub.mqtt.acks import Publish
from hub.store import Assigned, HubStore, NewTask, TaskSettings
from hub.store.audit import AuditEntry
from hub.store.leadership import NotLeaderError
from hub.tasks import allocation
from outpost import schema, wire
from outpost.aio import wait_event

logger = logging.getLogger(__name__)

PERIOD_S = 0.5
MAX_PLAN = 2000  # queued tasks considered per pass
MAX_GROUP_TASKS = 5000  # a group of waiting submissions stops growing past this many tasks


@dataclass(frozen=True)
class _Submission:
    """Tasks submitted together, their audit entry, and whether the leader's transaction
    that took them committed (False: queue them alone)."""

    new: list[NewTask]
    now: float
    audits: list[AuditEntry]
    committed: asyncio.Future[bool]


class Dispatcher:
    def __init__(
        self,
        store: HubStore,
        config: HubConfig,
        publish: Publish,
        *,
        queue: HubStore,
        cancels: Publish | None = None,
    ) -> None:
        """`store`: the view fenced by leadership, for passes; `queue`: the store itself,
        where a replica that does not lead queues what is submitted to it; `cancels`:
        how cancels go, if not as assignments do (those expire; a cancel may wait for
        its device to come back)."""
        self._store = store
        self._queue = queue
        self._publish = publish
        self._cancels = cancels or publish
        # One message carries assignments up to this many bytes of input: what a device
        # may send, the hub may send too (and the broker takes about four times that).
        self._message_bytes = config.max_payload_bytes - TASK_ENVELOPE_BYTES
        self.settings = TaskSettings(
            accept_timeout_s=config.task_accept_timeout_s,
            max_attempts=config.task_max_attempts,
            prefetch=config.task_prefetch,
            stale_after_heartbeats=config.offline_after_heartbeats,
            max_plan=MAX_PLAN,
            max_slots=config.task_max_slots,
        )
        self._wake = asyncio.Event()
        self._running = False  # `run` is running: this replica leads
        self._sending: set[asyncio.Task[None]] = set()
        # Submissions waiting for the leader's next transaction, and the task running them.
        self._submitted: list[_Submission] = []
        self._grouping: asyncio.Task[None] | None = None
        self.outcomes: collections.Counter[str] = collections.Counter()  # assigned, expired...

    def wake(self) -> None:
        """Something changed: run a pass soon."""
        self._wake.set()

    async def run(self) -> None:
        self._running = True
        try:
            while True:
                await wait_event(self._wake, PERIOD_S)
                self._wake.clear()
                try:
                    await self.allocate_once()
                except NotLeaderError as exc:  # the leadership loop stops this loop next
                    logger.info("allocation pass refused: %s", exc)
                except Exception:  # a locked database, say: the next pass tries again
                    logger.exception("allocation pass failed")
        finally:
            self._running = False
            for sending in self._sending:
                sending.cancel()

    async def submit(self, new: list[NewTask], now: float, audit: AuditEntry | None = None) -> None:
        """Queue `new` (with `audit`, the submission's audit entry, in the same commit); on
        the replica that leads, allocate in the same transaction and send what was
        assigned without waiting for it (the caller is answered once the tasks are
        durable). A pass that fails does not fail the submission: the tasks are then
        queued alone. Raises what the store raises if they could not be queued."""
        audits = [audit] if audit else []
        if self._running and await self._allocate_with(new, now, audits):
            return
        await self._queue.create_tasks(new, now=now, audits=audits)
        self.wake()

    async def _allocate_with(
        self, new: list[NewTask], now: float, audits: list[AuditEntry]
    ) -> bool:
        """Queue and allocate `new` together with the other submissions waiting meanwhile:
        whether that transaction committed. Submissions are grouped because a pass reads
        every online device (about 0.2 s at 25,000): one pass per submission would cap
        a large fleet at a few submissions a second, one pass per group does not."""
        waiting: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._submitted.append(_Submission(new, now, audits, waiting))
        if self._grouping is None:
            self._grouping = asyncio.create_task(self._allocate_submitted(), name="hub.submit")
        return await asyncio.shield(waiting)  # a caller gone does not stop its group

    async def _allocate_submitted(self) -> None:
        group: list[_Submission] = []
        try:
            while self._submitted:
                group = self._take_group()
                committed = await self._allocate_group(
                    [task for s in group for task in s.new],
                    max(s.now for s in group),
                    [entry for s in group for entry in s.audits],
                )
                for s in group:
                    s.committed.set_result(committed)
        finally:
            self._grouping = None
            # Cancelled (the hub stopping): whether the transaction committed is not
            # known, so the callers are not told to queue their tasks again.
            for s in group + self._submitted:
                s.committed.cancel()
            self._submitted = []

    def _take_group(self) -> list[_Submission]:
        """The submissions waiting longest, up to `MAX_GROUP_TASKS` tasks (at least one)."""
        count = taken = 0
        while taken < len(self._submitted) and (not taken or count < MAX_GROUP_TASKS):
            count += len(self._submitted[taken].new)
            taken += 1
        group, self._submitted = self._submitted[:taken], self._submitted[taken:]
        return group

    async def _allocate_group(
        self, tasks: list[NewTask], now: float, audits: list[AuditEntry]
    ) -> bool:
        try:
            assigned, swept = await self._store.create_and_allocate(
                tasks, now=now, settings=self.settings, plan=allocation.plan, audits=audits
            )
        except NotLeaderError:  # refused before anything was written
            return False
        except Exception:  # rolled back: each queued alone, for a later pass
            logger.exception("queuing and allocating %d tasks at once failed", len(tasks))
            return False
        self._count(swept)
        if assigned:
            self.outcomes["assigned"] += len(assigned)
            sending = asyncio.create_task(self._send(assigned, now), name="hub.send-tasks")
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)
        return True

    async def allocate_once(self) -> int:
        now = time.time()
        assigned, swept = await self._store.allocate(
            now=now, settings=self.settings, plan=allocation.plan
        )
        self._count(swept)
        if assigned:
            self.outcomes["assigned"] += len(assigned)
            await self._send(assigned, now)
        return len(assigned)

    def _count(self, swept: dict[str, int]) -> None:
        for name, count in swept.items():
            if count:
                self.outcomes[name] += count
                logger.info("%d tasks %s", count, name)

    async def _send(self, assigned: list[Assigned], now: float) -> None:
        by_device: dict[str, list[list[wire.Assignment]]] = collections.defaultdict(list)
        sizes: dict[str, int] = collections.defaultdict(int)
        for a in assigned:
            try:
                message = a.message(now)
            except schema.SchemaError as exc:  # queued before the API checked its input
                logger.error("task %s cannot be sent to %s: %s", a.task_id, a.device_id, exc)
                continue  # not accepted in time: it lapses, and fails after its attempts
            chunks = by_device[a.device_id]
            size = len(a.input) + 256
            if (
                not chunks
                or len(chunks[-1]) >= wire.MAX_TASK_BATCH
                or sizes[a.device_id] + size > self._message_bytes
            ):
                chunks.append([])
                sizes[a.device_id] = 0
            sizes[a.device_id] += size
            chunks[-1].append(message)
        for device_id, chunks in by_device.items():
            for chunk in chunks:
                # Encoded in the try: one chunk that cannot be (a task queued before the
                # API checked inputs) must not keep the next ones from being sent.
                try:
                    payload = wire.encode("tasks", wire.Tasks(tasks=chunk))
                    await self._publish(wire.down_topic(device_id, "tasks"), payload)
                except Exception as exc:
                    # Not accepted in time, so back to the queue: nothing else to do here.
                    logger.warning("could not send %d tasks to %s: %s", len(chunk), device_id, exc)

    async def send_cancel(self, device_id: str, task_id: str, attempt: int) -> None:
        payload = wire.encode("cancel", wire.Cancel(task_id=task_id, attempt=attempt))
        try:
            await self._cancels(wire.down_topic(device_id, "cancel"), payload)
        except Exception as exc:  # the device's result will be recorded as late anyway
            logger.warning("could not tell %s that %s is cancelled: %s", device_id, task_id, exc)
