"""Leases: the allocation pass and what devices say about their assignments.

An allocation pass (`allocate`) ends what expired, sends back to the queue what lapsed
(not accepted in time, or its lease ran out), asks a pure planner to pair queued tasks
with online devices, and assigns them (a new attempt, the fencing token, and a lease),
all in one transaction. What devices say of their assignments is taskreports.py's.
Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

import collections
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec

from hub.store.audit import AuditEntry
from hub.store.candidates import Candidate, read_candidates
from hub.store.sql import Sql
from hub.store.taskmoves import finish, record_events, requeue
from hub.store.tasks import NewTask, insert
from outpost import wire

MAX_SCAN = 20_000  # queued tasks one allocation pass may look at
FIRST_PAGE_PER_SLOT = 4  # queued tasks read first per free slot...
FIRST_PAGE_MIN = 64  # ...and at least this many
# A queue of at most this many runnable tasks is read whole before the devices, and
# only devices whose models name one of its models are read (see `_allocate`).
SHORT_QUEUE = 64


@dataclass(frozen=True)
class Queued:
    """A queued task as the planner sees it."""

    task_id: str
    model: str
    version: str
    priority: int
    deadline: float
    target: dict[str, Any]
    excluded: frozenset[str]


@dataclass(frozen=True)
class Assigned:
    """One assignment to publish."""

    device_id: str
    task_id: str
    attempt: int
    model: str
    version: str
    input: bytes
    dtype: str
    priority: int
    deadline: float
    lease_s: float

    def message(self, now: float) -> wire.Assignment:
        """The assignment as the device receives it (over MQTT or by courier bundle)."""
        return wire.Assignment(
            task_id=self.task_id,
            attempt=self.attempt,
            model=self.model,
            version=self.version,
            # The input as the hub packed it when the task was submitted, spliced into the
            # message as it is: decoding it to encode it again (and walking its nesting
            # once more) was a tenth of the hub's work per task. `wire.encode` still
            # decodes the whole message, input included, to check it before it leaves.
            input=msgspec.Raw(self.input),
            dtype=self.dtype,  # type: ignore[arg-type]
            priority=self.priority,
            deadline_in_s=max(0.0, self.deadline - now),
            lease_s=self.lease_s,
        )


@dataclass(frozen=True)
class Settings:
    accept_timeout_s: float
    max_attempts: int
    prefetch: int
    stale_after_heartbeats: float
    max_plan: int  # queued tasks considered per pass
    # Task slots the hub believes a device's hello claims, at most: the claim is the
    # device's word, and one device claiming 1,024 would win most "any device" tasks.
    max_slots: int = 16


Plan = Callable[[list[Queued], list[Candidate]], list[tuple[str, str]]]


def allocate(
    db: Sql, now: float, settings: Settings, plan: Plan
) -> tuple[list[Assigned], dict[str, int]]:
    """One allocation pass: expire, lapse, plan, assign. Returns the assignments to send
    and how many tasks each sweep ended or requeued (for logs and metrics)."""
    with db.write():
        return _allocate(db, now, settings, plan)


def create_and_allocate(
    db: Sql,
    new: Sequence[NewTask],
    now: float,
    settings: Settings,
    plan: Plan,
    audits: Sequence[AuditEntry] = (),
) -> tuple[list[Assigned], dict[str, int]]:
    """Queue `new` (recording `audits`, their submissions' entries) and run an allocation
    pass, in one transaction: a task submitted while a device has a slot free leaves with
    its assignment after one durable commit (a pass of its own would cost a second
    commit and another trip to the store's thread, its audit entry a third)."""
    with db.write():
        insert(db, new, now, audits)
        return _allocate(db, now, settings, plan)


def _allocate(
    db: Sql, now: float, settings: Settings, plan: Plan
) -> tuple[list[Assigned], dict[str, int]]:
    swept = _sweep(db, now, settings)
    # Nothing runnable queued (the usual case between bursts): reading and decoding
    # every online device would be the pass's whole cost, paid twice a second and
    # after every hello, for nothing.
    head = queued_tasks(db, now, SHORT_QUEUE + 1, 0)
    if not head:
        return [], swept
    # A short queue is known whole here: a device that reports none of its models can
    # take none of it, and is not read. A few tasks for a model no idle device has
    # (a roll-out not there yet) made every pass read the whole idle fleet: 25,000 rows,
    # 130 ms, twice a second. A longer queue is a busy fleet's, where the pass reads
    # only the few devices with room anyway.
    needed = {q.model for q in head} if len(head) <= SHORT_QUEUE else None
    named = {str(q.target["device"]) for q in head if q.target.get("device")}
    candidates = read_candidates(db, now, settings, with_room_only=True, needed=needed, named=named)
    assigned: list[Assigned] = []
    passed = scanned = 0  # queued tasks looked at and left queued; all looked at
    # Page through the queue in priority order until the devices are full: tasks no
    # device can take now (a named device offline, a model nobody has) must not
    # hide the runnable ones behind them.
    # The first page is sized to the free slots: a pass runs after every result that
    # frees one, and decoding a deep queue for one free slot was most of the hub's
    # time per task. Pages then grow, for tasks that fit no device.
    free = sum(max(0, c.slots - c.held) for c in candidates)
    size = min(settings.max_plan, max(FIRST_PAGE_PER_SLOT * free, FIRST_PAGE_MIN))
    # The head read above is the first page when it holds one (or the whole queue): a
    # pass runs after every result batch, and read again, the same rows were fetched and
    # decoded twice in every pass of a busy fleet.
    page: list[Queued] | None = (
        head[:size] if len(head) <= SHORT_QUEUE or size <= len(head) else None
    )
    while scanned < MAX_SCAN and any(c.held < c.slots for c in candidates):
        if page is None:
            page = queued_tasks(db, now, size, passed)
        size = min(settings.max_plan, size * 2)
        if not page:
            break
        chosen = plan(page, candidates)
        gained: collections.Counter[str] = collections.Counter()
        for task_id, device_id in chosen:
            assigned.append(_assign(db, task_id, device_id, now, settings))
            gained[device_id] += 1
        if gained:  # most of a large fleet gained nothing: keep those as they are
            candidates = [
                msgspec.structs.replace(c, held=c.held + gained[c.device_id])
                if c.device_id in gained
                else c
                for c in candidates
            ]
        passed += len(page) - len(chosen)  # the chosen ones left the queue
        scanned += len(page)
        page = None
    return assigned, swept


def _sweep(db: Sql, now: float, settings: Settings) -> dict[str, int]:
    swept = {"expired": 0, "lapsed": 0}
    for row in db.execute(
        "SELECT task_id, device_id, attempt FROM tasks WHERE state IN "
        "('queued', 'assigned', 'accepted', 'running') AND deadline <= ?",  # the index
        (now,),
    ).fetchall():
        finish(db, row["task_id"], "expired", now, row["device_id"], row["attempt"], "deadline")
        swept["expired"] += 1
    lapsed = db.execute(
        """SELECT task_id, state, device_id, attempt, excluded, target, lease_expires
           FROM tasks WHERE (state IN ('assigned', 'accepted', 'running') AND lease_expires <= ?)
               OR (state = 'assigned' AND updated_at <= ?)""",
        (now, now - settings.accept_timeout_s),
    ).fetchall()
    for row in lapsed:
        if row["lease_expires"] is not None and row["lease_expires"] <= now:
            detail = "lease lapsed"
        else:
            detail = f"not accepted within {settings.accept_timeout_s:g} s"
        requeue(db, row["task_id"], row, now, settings.max_attempts, "lapsed", detail)
        swept["lapsed"] += 1
    return swept


def queued_tasks(db: Sql, now: float, limit: int, offset: int) -> list[Queued]:
    """Queued tasks still in time, in the order they are given out."""
    rows = db.execute(
        """SELECT task_id, model, version, priority, deadline, target, excluded FROM tasks
           WHERE state = 'queued' AND deadline > ?
           ORDER BY priority DESC, deadline, seq LIMIT ? OFFSET ?""",
        (now, limit, offset),
    ).fetchall()
    return [
        Queued(
            r["task_id"],
            r["model"],
            r["version"],
            r["priority"],
            r["deadline"],
            _target(r["target"]),
            _excluded(r["excluded"]),
        )
        for r in rows
    ]


# Most queued tasks share a few targets ("any device", one selector) and exclude nobody:
# each distinct text is decoded once, and tasks of one kind share the decoded value
# (read only, by the planner).
@functools.lru_cache(maxsize=1024)
def _target(text: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(text))


@functools.lru_cache(maxsize=1024)
def _excluded(text: str) -> frozenset[str]:
    return frozenset(json.loads(text))


@dataclass(frozen=True)
class Known:
    """An enrolled device as a waiting task's explanation sees it."""

    online: bool
    revoked: bool
    models: frozenset[tuple[str, str]]  # (name, version) it reports, in any state


def task_fleet(db: Sql, now: float, settings: Settings) -> tuple[list[Candidate], dict[str, Known]]:
    """What the planner sees (the candidates), and every enrolled device by id: what a
    queued task's reason for waiting is worked out from."""
    with db.snapshot():
        candidates = read_candidates(db, now, settings)
        known = {
            r["device_id"]: Known(
                bool(r["online"]),
                r["revoked_at"] is not None,
                frozenset((m["name"], m["version"]) for m in json.loads(r["models"] or "[]")),
            )
            for r in db.execute("SELECT device_id, online, revoked_at, models FROM devices")
        }
    return candidates, known


def _assign(db: Sql, task_id: str, device_id: str, now: float, settings: Settings) -> Assigned:
    row = db.execute(
        """UPDATE tasks SET state = 'assigned', device_id = ?, attempt = attempt + 1,
               updated_at = ?, lease_expires = ? + lease_s
           WHERE task_id = ? AND state = 'queued'
           RETURNING attempt, model, version, input, dtype, priority, deadline, lease_s""",
        (device_id, now, now, task_id),
    ).fetchone()
    record_events(db, [(task_id, now, "assigned", device_id, row["attempt"], "")])
    return Assigned(
        device_id=device_id,
        task_id=task_id,
        attempt=row["attempt"],
        model=row["model"],
        version=row["version"],
        input=row["input"],
        dtype=row["dtype"],
        priority=row["priority"],
        deadline=row["deadline"],
        lease_s=row["lease_s"],
    )
