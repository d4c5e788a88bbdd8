"""The task inbox: assignments the agent accepted, kept in its store until their result
is (in the same transaction that appends the result to the results stream).

A finished task leaves a tombstone (state `done`, its input dropped) so that the same
assignment delivered again is known: MQTT's QoS 1 redelivers, after a reconnect, a
message whose acknowledgement the broken link lost, and without the tombstone the task
would run a second time. Redelivery covers only the messages in flight when the link
broke, so the newest `DONE_KEPT` tombstones are enough.

A task accepted before a crash or reboot is still here afterwards: those that were
running go back to pending and run again (their result carries the same attempt, so the
hub takes whichever arrives first). Pending tasks run highest priority first, then
earliest deadline; one whose deadline or lease has passed is dropped instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from outpost.sqlite import Database, soft_state

# "started": accepted and put straight in as running (`put_many`'s `start`).
PutOutcome = Literal["accepted", "started", "duplicate", "full", "superseded"]
DONE_KEPT = 1000  # tombstones of finished tasks: far more than MQTT keeps in flight
DONE_SLACK = 100  # tombstones past DONE_KEPT before the oldest are dropped


@dataclass(frozen=True)
class InboxTask:
    task_id: str
    attempt: int
    model: str
    version: str
    input: Any
    dtype: str
    priority: int
    deadline: float  # local epoch seconds
    lease_until: float  # local epoch seconds


def put_many(
    db: Database,
    tasks: list[InboxTask],
    capacity: int,
    now: float,
    start: int = 0,
) -> list[PutOutcome]:
    """Put the assignments of one message, in one transaction (one fsync); the first
    `start` new ones go in as running (claimed as they are put: the caller runs them)."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        return put_within(db, tasks, capacity, now, start)


def put_within(
    db: Database, tasks: list[InboxTask], capacity: int, now: float, start: int = 0
) -> list[PutOutcome]:
    """`put_many` inside a transaction the caller holds (the one that stores a result)."""
    outcomes: list[PutOutcome] = []
    for task in tasks:
        outcome = _put(db, task, capacity, now, running=start > 0)
        if outcome == "started":
            start -= 1
        outcomes.append(outcome)
    return outcomes


def put(db: Database, task: InboxTask, capacity: int, now: float) -> PutOutcome:
    (outcome,) = put_many(db, [task], capacity, now)
    return outcome


def _put(db: Database, task: InboxTask, capacity: int, now: float, *, running: bool) -> PutOutcome:
    row = db.execute(
        "SELECT attempt, state FROM inbox WHERE task_id = ?", (task.task_id,)
    ).fetchone()
    if row is not None and row["attempt"] >= task.attempt:
        # A redelivery of the same assignment (or an older one): accept it again.
        return "duplicate" if row["attempt"] == task.attempt else "superseded"
    if row is not None and row["state"] == "running":
        # The hub gave a newer attempt of the task being run (its lease lapsed while it
        # ran): carry on with the run and let its result carry the newer attempt.
        db.execute(
            "UPDATE inbox SET attempt = ?, deadline = ?, lease_until = ? WHERE task_id = ?",
            (task.attempt, task.deadline, task.lease_until, task.task_id),
        )
        return "accepted"
    if row is None or row["state"] == "done":
        (held,) = db.execute(  # two ranges of the index, not a scan of the tombstones
            "SELECT COUNT(*) FROM inbox WHERE state IN ('pending', 'running')"
        ).fetchone()
        if held >= capacity:
            return "full"
    db.execute(
        """INSERT INTO inbox (task_id, attempt, model, version, input, dtype, priority,
                   deadline, lease_until, state, received_at, started_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (task_id) DO UPDATE SET attempt = excluded.attempt,
                   model = excluded.model, version = excluded.version, input = excluded.input,
                   dtype = excluded.dtype, priority = excluded.priority,
                   deadline = excluded.deadline, lease_until = excluded.lease_until,
                   state = excluded.state, received_at = excluded.received_at,
                   started_at = excluded.started_at""",
        (
            task.task_id,
            task.attempt,
            task.model,
            task.version,
            msgspec.msgpack.encode(task.input),
            task.dtype,
            task.priority,
            task.deadline,
            task.lease_until,
            "running" if running else "pending",
            now,
            now if running else None,
        ),
    )
    return "started" if running else "accepted"


@dataclass(frozen=True)
class Claimed:
    """What one claim took: tasks now running, stale ones dropped, and how many wait."""

    tasks: list[InboxTask]
    stale: list[InboxTask]
    pending: int  # still pending after this claim
    damaged: list[str] = field(default_factory=list)  # dropped: their input does not decode


def claim(db: Database, now: float) -> tuple[InboxTask | None, list[InboxTask]]:
    """Take the next pending task (marking it running); also drop pending tasks whose
    deadline or lease has passed, and return them."""
    claimed = claim_many(db, now, 1)
    return (claimed.tasks[0] if claimed.tasks else None), claimed.stale


def claim_many(db: Database, now: float, limit: int) -> Claimed:
    """Take up to `limit` pending tasks in the order they run (marking them running), in
    one transaction; also drop pending tasks whose deadline or lease has passed.

    The commit does not wait for the disk: a claim a power cut loses leaves its tasks
    pending, to run again, as a claim kept does (`recover`); so may a dropped one come
    back, to be dropped again. The next synced commit takes it to the disk."""
    with soft_state(db), db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        return claim_within(db, now, limit)


def claim_within(db: Database, now: float, limit: int) -> Claimed:
    """`claim_many` inside a transaction the caller holds (the one that stores the
    result of the task whose slot it fills)."""
    damaged: list[str] = []
    stale = _readable(
        db.execute(
            """SELECT * FROM inbox
               WHERE state = 'pending' AND (deadline <= ? OR lease_until <= ?)""",
            (now, now),
        ).fetchall(),
        damaged,
    )
    _delete(db, [t.task_id for t in stale] + damaged)
    unreadable = len(damaged)
    tasks = _readable(
        db.execute(
            """SELECT * FROM inbox WHERE state = 'pending'
               ORDER BY priority DESC, deadline, received_at LIMIT ?""",
            (limit,),
        ).fetchall(),
        damaged,
    )
    if tasks:
        db.conn.executemany(
            "UPDATE inbox SET state = 'running', started_at = ? WHERE task_id = ?",
            [(now, t.task_id) for t in tasks],
        )
    _delete(db, damaged[unreadable:])
    (pending,) = db.execute("SELECT COUNT(*) FROM inbox WHERE state = 'pending'").fetchone()
    return Claimed(tasks, stale, pending, damaged)


def _delete(db: Database, task_ids: list[str]) -> None:
    if task_ids:
        db.conn.executemany("DELETE FROM inbox WHERE task_id = ?", [(t,) for t in task_ids])


def _readable(rows: list[Any], damaged: list[str]) -> list[InboxTask]:
    """The tasks of `rows`, but for those whose stored input does not decode (a damaged
    page), noted in `damaged`: dropped, not left to fail every claim, and the result
    transactions that claim with them."""
    tasks = []
    for row in rows:
        try:
            tasks.append(_task(row))
        except (ValueError, RecursionError):
            damaged.append(row["task_id"])
    return tasks


def attempt_of(db: Database, task_id: str) -> int | None:
    """The attempt the inbox now holds for a task (the hub may have re-given it)."""
    row = db.execute("SELECT attempt FROM inbox WHERE task_id = ?", (task_id,)).fetchone()
    return int(row["attempt"]) if row else None


def finish(db: Database, task_id: str, attempt: int) -> bool:
    """Mark a task whose result was appended done (inside that append's transaction),
    keeping the newest `DONE_KEPT` tombstones (and at most `DONE_SLACK` more); whether
    the inbox held it at that attempt."""
    held = db.execute(
        "UPDATE inbox SET state = 'done', input = X'' WHERE task_id = ? AND attempt = ?",
        (task_id, attempt),
    ).rowcount
    # Trimmed in steps of DONE_SLACK: sorting every tombstone to drop the oldest one
    # was a tenth of the agent's time per task. Counting them walks the index.
    (done,) = db.execute("SELECT COUNT(*) FROM inbox WHERE state = 'done'").fetchone()
    if done > DONE_KEPT + DONE_SLACK:
        db.execute(
            """DELETE FROM inbox WHERE task_id IN (SELECT task_id FROM inbox
                   WHERE state = 'done' ORDER BY received_at DESC LIMIT -1 OFFSET ?)""",
            (DONE_KEPT,),
        )
    return held > 0


def cancel(db: Database, task_id: str, attempt: int) -> str:
    """Drop a cancelled task unless it is running or done: dropped, running, done or
    unknown. A dropped one leaves a tombstone, as a finished one does: the same
    assignment delivered again (QoS 1) is then a duplicate, not a task to run."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "SELECT state FROM inbox WHERE task_id = ? AND attempt <= ?", (task_id, attempt)
        ).fetchone()
        if row is None:
            return "unknown"
        if row["state"] in ("running", "done"):
            return str(row["state"])
        db.execute("UPDATE inbox SET state = 'done', input = X'' WHERE task_id = ?", (task_id,))
        return "dropped"


def recover(db: Database) -> int:
    """After a restart: tasks that were running when the agent stopped run again."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        return db.execute(
            "UPDATE inbox SET state = 'pending', started_at = NULL WHERE state = 'running'"
        ).rowcount


def depth(db: Database) -> tuple[int, int]:
    """(pending, running)."""
    counts = dict(db.execute("SELECT state, COUNT(*) FROM inbox GROUP BY state").fetchall())
    return counts.get("pending", 0), counts.get("running", 0)


def _task(row: Any) -> InboxTask:
    return InboxTask(
        task_id=row["task_id"],
        attempt=row["attempt"],
        model=row["model"],
        version=row["version"],
        input=msgspec.msgpack.decode(row["input"]),
        dtype=row["dtype"],
        priority=row["priority"],
        deadline=row["deadline"],
        lease_until=row["lease_until"],
    )
