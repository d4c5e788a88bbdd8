"""Tasks at the hub: their states, leases and fencing tokens (each transition is made
and recorded by taskmoves.py).

States: queued -> assigned -> accepted -> running -> succeeded | failed | expired |
cancelled. `attempt` is the fencing token: each assignment increments it, and only a
result (or update) carrying the current attempt counts, until the allocation pass finds
its lease lapsed and takes the task back (then the attempt moves on; a result that comes
before that pass still ends the task, which no other device holds yet). Everything else
is recorded as late and changes nothing: the first valid result wins.

Each function runs on the store's worker thread as one unit of work; the allocation pass
sweeps, plans with a pure function it is given and writes the plan, all in
one transaction, so a crash never leaves a task half-assigned (`leases.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub.store import audit
from hub.store.audit import AuditEntry
from hub.store.sql import Sql, storable_text, without_nul
from hub.store.taskmoves import finish, record_events
from outpost import schema, wire
from outpost.schema import INT64_MAX

TERMINAL = ("succeeded", "failed", "expired", "cancelled")
HELD = ("assigned", "accepted", "running")  # states in which a device holds the task
# A task's deadline, at most: a year and a day. One a thousand years out was taken, and
# every listing of it then failed on a date past what the platform's clock can show.
MAX_DEADLINE_S = 366 * 86400
LATENCY_WEIGHT = 0.2  # weight of the newest result in a device's latency average


@dataclass(frozen=True)
class NewTask:
    task_id: str
    model: str
    version: str
    input: bytes  # msgpack of the input value, as it will be sent
    dtype: str
    priority: int
    deadline: float  # epoch seconds
    lease_s: float
    target: dict[str, Any]  # {} any device with the model; {"device": id}; {"selector": {...}}
    submitted_by: str


@dataclass(frozen=True)
class TaskEvent:
    at: float
    state: str
    device_id: str | None
    attempt: int
    detail: str


@dataclass(frozen=True)
class Task:
    task_id: str
    state: str
    model: str
    version: str
    dtype: str
    priority: int
    deadline: float
    lease_s: float
    target: dict[str, Any]
    created_at: float
    updated_at: float
    attempt: int
    device_id: str | None
    lease_expires: float | None
    excluded: list[str]
    result: dict[str, Any] | None
    error: str
    finished_at: float | None
    submitted_by: str
    seq: int
    input_bytes: int
    events: list[TaskEvent] = field(default_factory=list)


def create(
    db: Sql, tasks: Sequence[NewTask], now: float, audits: Sequence[AuditEntry] = ()
) -> None:
    with db.write():
        insert(db, tasks, now, audits)


def insert(
    db: Sql, tasks: Sequence[NewTask], now: float, audits: Sequence[AuditEntry] = ()
) -> None:
    """Queue `tasks`, and record `audits` (their submissions' entries), inside the
    caller's transaction."""
    for entry in audits:
        audit.record(db, entry)
    db.executemany(
        """INSERT INTO tasks (task_id, state, model, version, input, dtype, priority,
               deadline, lease_s, target, created_at, updated_at, submitted_by)
           VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            (
                t.task_id,
                t.model,
                t.version,
                t.input,
                t.dtype,
                t.priority,
                t.deadline,
                t.lease_s,
                json.dumps(t.target, sort_keys=True),
                now,
                now,
                t.submitted_by,
            )
            for t in tasks
        ],
    )
    record_events(db, [(t.task_id, now, "queued", None, 0, "") for t in tasks])


def get(db: Sql, task_id: str) -> Task | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()  # noqa: S608 - fixed column list
    if row is None:
        return None
    events = [
        TaskEvent(r["at"], r["state"], r["device_id"], r["attempt"], r["detail"])
        for r in db.execute(
            "SELECT * FROM task_events WHERE task_id = ? ORDER BY id", (task_id,)
        ).fetchall()
    ]
    return _task(row, events)


def page(
    db: Sql,
    *,
    states: Sequence[str],
    device_id: str | None,
    model: str | None,
    after: int | None,
    limit: int,
    newest_first: bool = False,
) -> list[Task]:
    """A page of tasks in submission order (or newest first), after the task numbered
    `after` in that order (keyset), in any of `states` (all when empty)."""
    args: list[Any]
    if newest_first:
        where, args = ["seq < ?"], [after if after is not None else 2**62]
    else:
        where, args = ["seq > ?"], [after or 0]
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        args.extend(states)
    for column, value in (("device_id", device_id), ("model", model)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    order = "seq DESC" if newest_first else "seq"
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM tasks WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?",  # noqa: S608 - fixed fragments; values are bound
        (*args, limit),
    ).fetchall()
    return [_task(r, []) for r in rows]


def counts(db: Sql) -> dict[str, int]:
    return {
        r[0]: r[1]
        for r in db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
    }


def cancel(db: Sql, task_id: str, now: float) -> tuple[Task | None, str]:
    """Cancel a task that has not ended. Returns it and, if a device held it, that device
    (to be told); a task already ended comes back unchanged with no device."""
    with db.write():
        row = db.execute(
            "SELECT state, device_id, attempt FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or row["state"] in TERMINAL:
            return get(db, task_id), ""
        holder = row["device_id"] if row["state"] in HELD else ""
        finish(db, task_id, "cancelled", now, row["device_id"], row["attempt"], "by request")
    return get(db, task_id), holder or ""


def apply_result(db: Sql, device_id: str, body: dict[str, Any], now: float) -> str:
    """A task result from a device's results stream (inside the caller's transaction).

    Accepted only if it carries the current attempt of a task that device holds; the
    first valid result ends the task. Anything else is recorded as late.
    """
    task_id, attempt = body.get("task_id"), body.get("attempt")
    if not isinstance(task_id, str) or not isinstance(attempt, int) or isinstance(attempt, bool):
        return "malformed"
    # Bound as the wire bounds an update's (`TaskId`, `Attempt`): a value a back-end cannot
    # store would fail the transaction it shares with every upload of its batch.
    if len(task_id) > MAX_TASK_ID or not storable_text(task_id) or not 1 <= attempt <= INT64_MAX:
        return "malformed"
    row = db.execute(
        "SELECT state, device_id, attempt FROM tasks WHERE task_id = ?", (task_id,)
    ).fetchone()
    if row is None:
        return "unknown"
    if row["state"] not in HELD or row["device_id"] != device_id or row["attempt"] != attempt:
        why = (
            f"attempt {attempt} from {device_id}; the task is {row['state']}"
            f" (attempt {row['attempt']}"
            + (f" on {row['device_id']})" if row["device_id"] else ")")
        )
        record_events(db, [(task_id, now, "late", device_id, attempt, why)])
        return "late"
    problem = _result_problem(body)
    if problem:
        record_events(db, [(task_id, now, "malformed", device_id, attempt, problem)])
        return "malformed"
    status = "succeeded" if body.get("status") == "succeeded" else "failed"
    result = {
        k: body.get(k)
        for k in ("label", "confidence", "scores", "latency_ms", "started_at", "finished_at")
    }
    error = without_nul(str(body.get("error") or "")[:512])
    db.execute(
        "UPDATE tasks SET result = ?, error = ? WHERE task_id = ?",
        (json.dumps(result), error, task_id),
    )
    finish(db, task_id, status, now, device_id, attempt, error)
    latency = body.get("latency_ms")
    if isinstance(latency, int | float):
        db.execute(
            """UPDATE devices SET task_latency_ms =
                   COALESCE(task_latency_ms * ? + ? * ?, ?) WHERE device_id = ?""",
            (1 - LATENCY_WEIGHT, LATENCY_WEIGHT, latency, latency, device_id),
        )
    return "accepted"


# ------------------------------------------------------------------------- internals

_NUMBER = (int, float)
MAX_TASK_ID = schema.max_len(wire.TaskUpdate, "task_id")  # as the wire bounds an update's
MAX_NUMBER = 1e15  # a result's numbers: times in seconds, latencies in ms, scores


def _result_problem(body: dict[str, Any]) -> str:
    """Why a device's task result cannot be taken as it is ("" if it can)."""
    if body.get("status") not in ("succeeded", "failed"):
        return "status must be succeeded or failed"
    for key in ("confidence", "latency_ms", "started_at", "finished_at"):
        value = body.get(key)
        if value is not None and not _finite_number(value):
            return f"{key} must be a finite number"
    for key in ("label", "error"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key} must be a string"
    scores = body.get("scores")
    if scores is not None and not (
        isinstance(scores, dict)
        and len(scores) <= 1000
        and all(isinstance(k, str) and _finite_number(v) for k, v in scores.items())
    ):
        return "scores must map labels to finite numbers"
    return ""


def _finite_number(value: Any) -> bool:
    return (
        isinstance(value, _NUMBER)
        and not isinstance(value, bool)
        and -MAX_NUMBER <= value <= MAX_NUMBER  # NaN compares false: refused too
    )


_COLUMNS = """seq, task_id, state, model, version, dtype, priority, deadline, lease_s, target,
    created_at, updated_at, attempt, device_id, lease_expires, excluded, result, error,
    finished_at, submitted_by, length(input) AS input_bytes"""


def _task(row: Any, events: list[TaskEvent]) -> Task:
    return Task(
        task_id=row["task_id"],
        state=row["state"],
        model=row["model"],
        version=row["version"],
        dtype=row["dtype"],
        priority=row["priority"],
        deadline=row["deadline"],
        lease_s=row["lease_s"],
        target=json.loads(row["target"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempt=row["attempt"],
        device_id=row["device_id"],
        lease_expires=row["lease_expires"],
        excluded=json.loads(row["excluded"]),
        result=json.loads(row["result"]) if row["result"] else None,
        error=row["error"],
        finished_at=row["finished_at"],
        submitted_by=row["submitted_by"],
        seq=row["seq"],
        input_bytes=row["input_bytes"],
        events=events,
    )
