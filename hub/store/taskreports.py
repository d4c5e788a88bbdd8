"""What devices say of their assignments: accepted, rejected, running.

Each report is checked against the task's current holder and attempt (the fencing
token): a report of another attempt, another device or an ended task is stale and
changes nothing. Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from hub.store.leases import Settings
from hub.store.sql import Sql, storable_text, without_nul
from hub.store.taskmoves import move, requeue
from hub.store.tasks import HELD


def update(
    db: Sql,
    device_id: str,
    updates: Iterable[Any],
    now: float,
    settings: Settings,
) -> list[tuple[str, str]]:
    """Apply a device's accepted / rejected / running updates; return (task_id, outcome)
    for each: applied, or stale (another attempt, another device, or already ended)."""
    (outcomes,) = update_many(db, [(device_id, updates)], now, settings)
    return outcomes


def update_many(
    db: Sql,
    reports: Sequence[tuple[str, Iterable[Any]]],
    now: float,
    settings: Settings,
) -> list[list[tuple[str, str]]]:
    """`update` for several devices' reports in one transaction, and a soft one: a lost
    accepted or running only leaves the hub thinking a task assigned (it lapses, and
    the device's result still ends it, fenced by its attempt), and a lost rejection
    lapses the same way. Allocation, which hands out attempts, commits durably, and its
    commit takes these to the disk with its own."""
    with db.soft(), db.write():
        return [_update(db, device_id, updates, now, settings) for device_id, updates in reports]


def _update(
    db: Sql, device_id: str, updates: Iterable[Any], now: float, settings: Settings
) -> list[tuple[str, str]]:
    outcomes = []
    for u in updates:
        if not storable_text(u.task_id):  # no task has such an id; binding it fails on one
            outcomes.append((u.task_id, "stale"))  # back-end the whole batch of devices
            continue
        row = db.execute(
            "SELECT state, device_id, attempt, excluded, target FROM tasks WHERE task_id = ?",
            (u.task_id,),
        ).fetchone()
        current = (
            row is not None
            and row["device_id"] == device_id
            and row["attempt"] == u.attempt
            and row["state"] in HELD
        )
        if not current:
            outcomes.append((u.task_id, "stale"))
            continue
        if u.state == "rejected":
            _reject(db, u.task_id, row, device_id, u.attempt, u.reason, now, settings)
        elif u.state == "accepted" and row["state"] == "assigned":
            move(db, u.task_id, "accepted", now, device_id, u.attempt, "")
        elif u.state == "running" and row["state"] in ("assigned", "accepted"):
            move(db, u.task_id, "running", now, device_id, u.attempt, "")
        outcomes.append((u.task_id, "applied"))
    return outcomes


def _reject(
    db: Sql,
    task_id: str,
    row: Any,
    device_id: str,
    attempt: int,
    reason: str,
    now: float,
    settings: Settings,
) -> None:
    full = {**dict(row), "device_id": device_id, "attempt": attempt}
    why = without_nul(reason) or "no reason"  # as the result's error text
    requeue(db, task_id, full, now, settings.max_attempts, "rejected", why)
