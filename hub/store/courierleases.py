"""Tasks leased by courier bundle: a device at a site with no link takes queued tasks it
fits (its target, its models) in the hub's bundle for it, each leased for the courier's
round trip, stated at export. The task counts as accepted from the moment the bundle is
made (nobody could say so sooner); its result comes back in the device's next bundle
and ends it as an MQTT result would (first valid result wins). A lease that lapses
first puts the task back in the queue, and the device's result then counts as late.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from hub.store.candidates import Candidate
from hub.store.leases import Assigned, Queued, queued_tasks
from hub.store.sql import Sql
from hub.store.taskmoves import finish, record_events, requeue

Fits = Callable[[Queued, Candidate], bool]  # hub/tasks/allocation.py's `matches`

SCAN = 1000  # queued tasks looked at per bundle, in priority order


def lease(
    db: Sql, device_id: str, now: float, lease_s: float, limit: int, fits: Fits
) -> list[Assigned]:
    """Up to `limit` queued tasks this device `fits`, leased to it for `lease_s`."""
    if limit <= 0:
        return []
    with db.write():
        row = db.execute(
            "SELECT labels, models, revoked_at FROM devices WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None or row["revoked_at"] is not None:
            return []
        device = Candidate(
            device_id=device_id,
            labels=json.loads(row["labels"]),
            models=frozenset(
                (m["name"], m["version"])
                for m in json.loads(row["models"] or "[]")
                if m.get("state") == "ready"
            ),
            slots=limit,
            concurrency=1,
            held=0,
            cpu_percent=None,
            temperature_c=None,
            latency_ms=None,
        )
        leased = []
        for task in queued_tasks(db, now, SCAN, 0):
            if device_id in task.excluded or not fits(task, device):
                continue
            leased.append(_lease(db, task.task_id, device_id, now, lease_s))
            if len(leased) >= limit:
                break
        return leased


def _lease(db: Sql, task_id: str, device_id: str, now: float, lease_s: float) -> Assigned:
    row = db.execute(
        """UPDATE tasks SET state = 'accepted', device_id = ?, attempt = attempt + 1,
               updated_at = ?, lease_expires = ?
           WHERE task_id = ? AND state = 'queued'
           RETURNING attempt, model, version, input, dtype, priority, deadline""",
        (device_id, now, now + lease_s, task_id),
    ).fetchone()
    detail = f"by courier bundle, leased for {lease_s / 86400:g} days"
    record_events(db, [(task_id, now, "assigned", device_id, row["attempt"], detail)])
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
        lease_s=lease_s,
    )


def give_back(db: Sql, leased: list[Assigned], now: float, why: str) -> None:
    """Put tasks leased for a bundle that was then not made back in the queue: no device
    holds them. Their attempt numbers stay used (fencing tokens are never reused)."""
    with db.write():
        for a in leased:
            back = db.execute(
                """UPDATE tasks SET state = 'queued', lease_expires = NULL, updated_at = ?
                   WHERE task_id = ? AND state = 'accepted' AND device_id = ? AND attempt = ?""",
                (now, a.task_id, a.device_id, a.attempt),
            ).rowcount
            if back:
                record_events(db, [(a.task_id, now, "requeued", a.device_id, a.attempt, why)])


def end_lapsed(db: Sql, device_id: str, now: float, max_attempts: int) -> int:
    """Do for the tasks `device_id` holds what the hub's allocation pass does for every
    device's (hub/store/leases.py): end those past their deadline, and put back in the
    queue those whose lease ran out; how many. Run before a device bundle's results are
    applied, so that a result that comes after its lease counts as late, as at a
    running hub (whose pass runs every second), also when the hub was stopped meanwhile
    and no pass ran."""
    with db.write():
        rows = db.execute(
            """SELECT task_id, state, device_id, attempt, excluded, target, deadline
               FROM tasks WHERE device_id = ? AND state IN ('assigned', 'accepted', 'running')
                   AND (deadline <= ? OR lease_expires <= ?)""",
            (device_id, now, now),
        ).fetchall()
        for row in rows:
            if row["deadline"] <= now:
                finish(db, row["task_id"], "expired", now, device_id, row["attempt"], "deadline")
            else:
                requeue(db, row["task_id"], row, now, max_attempts, "lapsed", "lease lapsed")
    return len(rows)
