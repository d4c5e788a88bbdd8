"""Tasks at the hub: their states, leases and fencing tokens, and every transition.

States: queued -> assigned -> accepted -> running -> succeeded | failed | expired |
cancelled. `attempt` is the fencing token: each assignment increments it, and only a
result (or update) carrying the current attempt, while the lease is current, counts.
Everything else is recorded as late and changes nothing: the first valid result wins.

Each function runs on the store's worker thread as one unit of work; the allocation pass
(`allocate`) sweeps, plans with a pure function it is given and writes the plan, all in
one transaction, so a crash never leaves a task half-assigned.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import sqlite_utils

TERMINAL = ("succeeded", "failed", "expired", "cancelled")
HELD = ("assigned", "accepted", "running")  # states in which a device holds the task
LATENCY_WEIGHT = 0.2  # weight of the newest result in a device's latency average
MAX_SCAN = 20_000  # queued tasks one allocation pass may look at


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
class Candidate:
    """An online device as the planner sees it."""

    device_id: str
    labels: dict[str, str]
    models: frozenset[tuple[str, str]]  # (name, version) loaded and ready
    slots: int  # tasks it may hold: its concurrency plus the work given ahead
    concurrency: int
    held: int  # tasks the hub counts as assigned to it and not finished
    cpu_percent: float | None  # None: no fresh load report (unknown, not idle)
    temperature_c: float | None
    latency_ms: float | None


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


@dataclass(frozen=True)
class Settings:
    accept_timeout_s: float
    max_attempts: int
    prefetch: int
    stale_after_heartbeats: float
    max_plan: int  # queued tasks considered per pass


Plan = Callable[[list[Queued], list[Candidate]], list[tuple[str, str]]]


def create(db: sqlite_utils.Database, tasks: Sequence[NewTask], now: float) -> None:
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        db.conn.executemany(
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
        _events(db, [(t.task_id, now, "queued", None, 0, "") for t in tasks])


def get(db: sqlite_utils.Database, task_id: str) -> Task | None:
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
    db: sqlite_utils.Database,
    *,
    state: str | None,
    device_id: str | None,
    model: str | None,
    after: int | None,
    limit: int,
) -> list[Task]:
    where: list[str] = ["seq > ?"]
    args: list[Any] = [after or 0]
    for column, value in (("state", state), ("device_id", device_id), ("model", model)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM tasks WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",  # noqa: S608 - fixed fragments; values are bound
        (*args, limit),
    ).fetchall()
    return [_task(r, []) for r in rows]


def counts(db: sqlite_utils.Database) -> dict[str, int]:
    return {
        r[0]: r[1]
        for r in db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
    }


def cancel(db: sqlite_utils.Database, task_id: str, now: float) -> tuple[Task | None, str]:
    """Cancel a task that has not ended. Returns it and, if a device held it, that device
    (to be told); a task already ended comes back unchanged with no device."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        row = db.execute(
            "SELECT state, device_id, attempt FROM tasks WHERE task_id = ?", (task_id,)
        ).fetchone()
        if row is None or row["state"] in TERMINAL:
            return get(db, task_id), ""
        holder = row["device_id"] if row["state"] in HELD else ""
        _finish(db, task_id, "cancelled", now, row["device_id"], row["attempt"], "by request")
    return get(db, task_id), holder or ""


def allocate(
    db: sqlite_utils.Database, now: float, settings: Settings, plan: Plan
) -> tuple[list[Assigned], dict[str, int]]:
    """One allocation pass: expire, lapse, plan, assign. Returns the assignments to send
    and how many tasks each sweep ended or requeued (for logs and metrics)."""
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        swept = _sweep(db, now, settings)
        candidates = _candidates(db, now, settings)
        assigned: list[Assigned] = []
        passed = scanned = 0  # queued tasks looked at and left queued; all looked at
        # Page through the queue in priority order until the devices are full: tasks no
        # device can take now (a named device offline, a model nobody has) must not
        # hide the runnable ones behind them.
        while scanned < MAX_SCAN and any(c.held < c.slots for c in candidates):
            page = _queued(db, now, settings.max_plan, passed)
            if not page:
                break
            chosen = plan(page, candidates)
            gained: collections.Counter[str] = collections.Counter()
            for task_id, device_id in chosen:
                assigned.append(_assign(db, task_id, device_id, now, settings))
                gained[device_id] += 1
            candidates = [
                dataclasses.replace(c, held=c.held + gained[c.device_id]) for c in candidates
            ]
            passed += len(page) - len(chosen)  # the chosen ones left the queue
            scanned += len(page)
        return assigned, swept


def update(
    db: sqlite_utils.Database,
    device_id: str,
    updates: Iterable[Any],
    now: float,
    settings: Settings,
) -> list[tuple[str, str]]:
    """Apply a device's accepted / rejected / running updates; return (task_id, outcome)
    for each: applied, or stale (another attempt, another device, or already ended)."""
    outcomes = []
    with db.conn:
        db.conn.execute("BEGIN IMMEDIATE")
        for u in updates:
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
                _move(db, u.task_id, "accepted", now, device_id, u.attempt, "")
            elif u.state == "running" and row["state"] in ("assigned", "accepted"):
                _move(db, u.task_id, "running", now, device_id, u.attempt, "")
            outcomes.append((u.task_id, "applied"))
    return outcomes


def apply_result(
    db: sqlite_utils.Database, device_id: str, body: dict[str, Any], now: float
) -> str:
    """A task result from a device's results stream (inside the caller's transaction).

    Accepted only if it carries the current attempt of a task that device holds; the
    first valid result ends the task. Anything else is recorded as late.
    """
    task_id, attempt = body.get("task_id"), body.get("attempt")
    if not isinstance(task_id, str) or not isinstance(attempt, int):
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
        _events(db, [(task_id, now, "late", device_id, attempt, why)])
        return "late"
    problem = _result_problem(body)
    if problem:
        _events(db, [(task_id, now, "malformed", device_id, attempt, problem)])
        return "malformed"
    status = "succeeded" if body.get("status") == "succeeded" else "failed"
    result = {
        k: body.get(k)
        for k in ("label", "confidence", "scores", "latency_ms", "started_at", "finished_at")
    }
    error = str(body.get("error") or "")[:512]
    db.execute(
        "UPDATE tasks SET result = ?, error = ? WHERE task_id = ?",
        (json.dumps(result), error, task_id),
    )
    _finish(db, task_id, status, now, device_id, attempt, error)
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


def _result_problem(body: dict[str, Any]) -> str:
    """Why a device's task result cannot be taken as it is ("" if it can)."""
    if body.get("status") not in ("succeeded", "failed"):
        return "status must be succeeded or failed"
    for key in ("confidence", "latency_ms", "started_at", "finished_at"):
        value = body.get(key)
        if value is not None and (not isinstance(value, _NUMBER) or isinstance(value, bool)):
            return f"{key} must be a number"
    for key in ("label", "error"):
        if body.get(key) is not None and not isinstance(body[key], str):
            return f"{key} must be a string"
    scores = body.get("scores")
    if scores is not None and not (
        isinstance(scores, dict)
        and len(scores) <= 1000
        and all(isinstance(k, str) and isinstance(v, _NUMBER) for k, v in scores.items())
    ):
        return "scores must map labels to numbers"
    return ""


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


def _events(db: sqlite_utils.Database, rows: list[tuple[Any, ...]]) -> None:
    db.conn.executemany(
        """INSERT INTO task_events (task_id, at, state, device_id, attempt, detail)
           VALUES (?, ?, ?, ?, ?, ?)""",
        rows,
    )


def _move(
    db: sqlite_utils.Database,
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
    _events(db, [(task_id, now, state, device_id, attempt, detail)])


def _finish(
    db: sqlite_utils.Database,
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
    _events(db, [(task_id, now, state, device_id, attempt, detail)])


def _requeue(
    db: sqlite_utils.Database,
    task_id: str,
    row: Any,
    now: float,
    settings: Settings,
    event: str,
    detail: str,
) -> str:
    """Back to the queue for another device, or failed after `max_attempts`.

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
    db.execute(
        "UPDATE tasks SET excluded = ?, lease_expires = NULL WHERE task_id = ?",
        (json.dumps(excluded), task_id),
    )
    _events(db, [(task_id, now, event, row["device_id"], row["attempt"], detail)])
    # A full device does not use up attempts: the deadline bounds how long it may bounce.
    if not retry_here and (
        row["attempt"] >= settings.max_attempts or (only and event == "rejected")
    ):
        why = f"{event} on attempt {row['attempt']} ({row['device_id']}): {detail}"
        _finish(db, task_id, "failed", now, row["device_id"], row["attempt"], why)
        return "failed"
    db.execute(
        "UPDATE tasks SET state = 'queued', updated_at = ? WHERE task_id = ?", (now, task_id)
    )
    return "requeued"


def _reject(
    db: sqlite_utils.Database,
    task_id: str,
    row: Any,
    device_id: str,
    attempt: int,
    reason: str,
    now: float,
    settings: Settings,
) -> None:
    full = {**dict(row), "device_id": device_id, "attempt": attempt}
    _requeue(db, task_id, full, now, settings, "rejected", reason or "no reason")


def _sweep(db: sqlite_utils.Database, now: float, settings: Settings) -> dict[str, int]:
    swept = {"expired": 0, "lapsed": 0}
    for row in db.execute(
        "SELECT task_id, device_id, attempt FROM tasks WHERE state IN "
        "('queued', 'assigned', 'accepted', 'running') AND deadline <= ?",  # the index
        (now,),
    ).fetchall():
        _finish(db, row["task_id"], "expired", now, row["device_id"], row["attempt"], "deadline")
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
        _requeue(db, row["task_id"], row, now, settings, "lapsed", detail)
        swept["lapsed"] += 1
    return swept


def _queued(db: sqlite_utils.Database, now: float, limit: int, offset: int) -> list[Queued]:
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
            json.loads(r["target"]),
            frozenset(json.loads(r["excluded"])),
        )
        for r in rows
    ]


def _candidates(db: sqlite_utils.Database, now: float, settings: Settings) -> list[Candidate]:
    held = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT device_id, COUNT(*) FROM tasks WHERE state IN "
            "('assigned', 'accepted', 'running') GROUP BY device_id"
        ).fetchall()
    }
    out = []
    for r in db.execute(
        """SELECT device_id, labels, models, load, last_heartbeat, heartbeat_interval,
               task_slots, task_inbox, task_latency_ms
           FROM devices WHERE online = 1 AND task_slots > 0"""
    ).fetchall():
        load = json.loads(r["load"] or "{}")
        interval = r["heartbeat_interval"] or 0
        fresh = (
            r["last_heartbeat"] is not None
            and now - r["last_heartbeat"] <= settings.stale_after_heartbeats * interval
            and "cpu_percent" in load
        )
        out.append(
            Candidate(
                device_id=r["device_id"],
                labels=json.loads(r["labels"]),
                models=frozenset(
                    (m["name"], m["version"])
                    for m in json.loads(r["models"] or "[]")
                    if m.get("state") == "ready"
                ),
                # Never more than the device said it holds: it would refuse the rest.
                slots=min(r["task_slots"] + settings.prefetch, r["task_inbox"] or 1 << 30),
                concurrency=r["task_slots"],
                held=held.get(r["device_id"], 0),
                cpu_percent=load.get("cpu_percent") if fresh else None,
                temperature_c=load.get("temperature_c") if fresh else None,
                latency_ms=r["task_latency_ms"],
            )
        )
    return out


def _assign(
    db: sqlite_utils.Database, task_id: str, device_id: str, now: float, settings: Settings
) -> Assigned:
    row = db.execute(
        """UPDATE tasks SET state = 'assigned', device_id = ?, attempt = attempt + 1,
               updated_at = ?, lease_expires = ? + lease_s
           WHERE task_id = ? AND state = 'queued'
           RETURNING attempt, model, version, input, dtype, priority, deadline, lease_s""",
        (device_id, now, now, task_id),
    ).fetchone()
    _events(db, [(task_id, now, "assigned", device_id, row["attempt"], "")])
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


def unpack_input(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
