"""Every transition of a task at the hub, recorded as a task event and published to the
sinks: moved on, finished, or given back to the queue (see tasks.py for the states)."""

from __future__ import annotations

import json
from typing import Any

from hub.store import outbox
from hub.store.sql import Sql

# How long a device that answered "full" is offered no task (`requeue`).
BUSY_BACKOFF_S = 2.0


def record_events(db: Sql, rows: list[tuple[Any, ...]]) -> None:
    """Record task transitions (task, at, state, device, attempt, detail), and publish
    them to the sinks as org.outpost.task.<state>."""
    db.executemany(
        """INSERT INTO task_events (task_id, at, state, device_id, attempt, detail)
           VALUES (?, ?, ?, ?, ?, ?)""",
        rows,
    )
    outbox.emit_many(
        db,
        [
            (
                f"task.{state}",
                device_id or "",
                {"task_id": task_id, "attempt": attempt, "detail": detail},
                at,
            )
            for task_id, at, state, device_id, attempt, detail in rows
        ],
    )


def move(
    db: Sql,
    task_id: str,
    state: str,
    now: float,
    device_id: str | None,
    attempt: int,
    detail: str,
) -> None:
    db.execute(
        "UPDATE tasks SET state = ?, updated_at = ? WHERE task_id = ?", (state, now, task_id)
    )
    record_events(db, [(task_id, now, state, device_id, attempt, detail)])


def finish(
    db: Sql,
    task_id: str,
    state: str,
    now: float,
    device_id: str | None,
    attempt: int,
    detail: str,
) -> None:
    db.execute(
        """UPDATE tasks SET state = ?, updated_at = ?, finished_at = ?, lease_expires = NULL,
               error = CASE WHEN ? = 'succeeded' THEN error ELSE COALESCE(NULLIF(error, ''), ?)
               END
           WHERE task_id = ?""",
        (state, now, now, state, detail, task_id),
    )
    record_events(db, [(task_id, now, state, device_id, attempt, detail)])


def requeue(
    db: Sql,
    task_id: str,
    row: Any,
    now: float,
    max_attempts: int,
    event: str,
    detail: str,
) -> str:
    """Back to the queue for another device, or failed after `max_attempts` attempts
    (an allocation pass's lapse, or a device's rejection).

    The device that rejected or lost the task is excluded from it, unless the task
    names that device alone: a lapse there is retried on it (it may have rebooted), a
    rejection ends the task (the device said it cannot run it)."""
    excluded = json.loads(row["excluded"])
    only = json.loads(row["target"]).get("device")
    # "full" is the device's momentary state, not its verdict on the task: ask it again.
    retry_here = event == "rejected" and detail.startswith("full")
    if (
        row["device_id"]
        and row["device_id"] not in excluded
        and only != row["device_id"]
        and not retry_here
    ):
        excluded.append(row["device_id"])
    if retry_here and row["device_id"]:
        # Asked again, but not before it has had a moment (and, as over its CPU cap, a
        # heartbeat's fresher load): not in a loop at once.
        db.execute(
            "UPDATE devices SET busy_until = ? WHERE device_id = ?",
            (now + BUSY_BACKOFF_S, row["device_id"]),
        )
    db.execute(
        "UPDATE tasks SET excluded = ?, lease_expires = NULL WHERE task_id = ?",
        (json.dumps(excluded), task_id),
    )
    record_events(db, [(task_id, now, event, row["device_id"], row["attempt"], detail)])
    # A full device does not use up attempts: the deadline bounds how long it may bounce.
    # (The attempt number, the fencing token, counts every assignment, full ones too.)
    if not retry_here and (_spent(db, task_id) >= max_attempts or (only and event == "rejected")):
        why = f"{event} on attempt {row['attempt']} ({row['device_id']}): {detail}"
        finish(db, task_id, "failed", now, row["device_id"], row["attempt"], why)
        return "failed"
    db.execute(
        "UPDATE tasks SET state = 'queued', updated_at = ? WHERE task_id = ?", (now, task_id)
    )
    return "requeued"


def _spent(db: Sql, task_id: str) -> int:
    """The attempts a task used up: each lapse and rejection, but a device's "full"."""
    (n,) = db.execute(
        """SELECT COUNT(*) FROM task_events WHERE task_id = ?
           AND state IN ('lapsed', 'rejected') AND detail NOT LIKE 'full%'""",
        (task_id,),
    ).fetchone()
    return int(n)
