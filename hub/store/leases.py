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

from hub.store.sql import Sql
from hub.store.tasks import NewTask, finish, insert, record_events, requeue, unpack_input
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


# A msgspec struct, not a dataclass: a pass makes one for every online device, and a
# frozen dataclass's constructor took 3.1 us against 0.23 (78 ms a pass at 25,000).
class Candidate(msgspec.Struct, frozen=True):
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

    def message(self, now: float) -> wire.Assignment:
        """The assignment as the device receives it (over MQTT or by courier bundle)."""
        return wire.Assignment(
            task_id=self.task_id,
            attempt=self.attempt,
            model=self.model,
            version=self.version,
            input=unpack_input(self.input),
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
    db: Sql, new: Sequence[NewTask], now: float, settings: Settings, plan: Plan
) -> tuple[list[Assigned], dict[str, int]]:
    """Queue `new` and run an allocation pass, in one transaction: a task submitted while
    a device has a slot free leaves with its assignment after one durable commit (a pass
    of its own would cost a second commit and another trip to the store's thread)."""
    with db.write():
        insert(db, new, now)
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
    candidates = _candidates(db, now, settings, with_room_only=True, needed=needed)
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
    while scanned < MAX_SCAN and any(c.held < c.slots for c in candidates):
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
        candidates = _candidates(db, now, settings)
        known = {
            r["device_id"]: Known(
                bool(r["online"]),
                r["revoked_at"] is not None,
                frozenset((m["name"], m["version"]) for m in json.loads(r["models"] or "[]")),
            )
            for r in db.execute("SELECT device_id, online, revoked_at, models FROM devices")
        }
    return candidates, known


# What a device may hold, worked out in SQL so that a pass can leave full devices unread:
# what its hello claims, bounded by `max_slots`; one task at a time until a result of
# its own has come back (the latency it reports with it: a claim is earned, not taken);
# plus the work given ahead; and never more than the inbox it said it has.
_CONCURRENCY = """CASE WHEN d.task_latency_ms IS NULL THEN 1
                      WHEN d.task_slots < ? THEN d.task_slots ELSE ? END"""
_SLOTS = f"""CASE WHEN d.task_inbox IS NOT NULL AND d.task_inbox > 0
                    AND d.task_inbox < ({_CONCURRENCY}) + ?
                  THEN d.task_inbox ELSE ({_CONCURRENCY}) + ? END"""
# Counted per device through the tasks_device index: grouping every task in flight
# instead took 181 ms with 150,000 of them (25,000 busy devices), the index 88 ms.
_HELD = """(SELECT COUNT(*) FROM tasks t WHERE t.device_id = d.device_id
              AND t.state IN ('assigned', 'accepted', 'running'))"""


def _candidates(
    db: Sql,
    now: float,
    settings: Settings,
    *,
    with_room_only: bool = False,
    needed: set[str] | None = None,
) -> list[Candidate]:
    """Online devices that take tasks; with `with_room_only`, only those holding fewer
    tasks than they may (all a pass can use: in a busy fleet, a few of many); with
    `needed` (model names), only those whose reported models name one of them (in any state: the
    planner checks which are ready)."""
    concurrency_params = [settings.max_slots, settings.max_slots]
    slots_params = [*concurrency_params, settings.prefetch] * 2  # _CONCURRENCY + ?, twice
    params: list[object] = [*concurrency_params, *slots_params]
    where = "d.online = 1 AND d.task_slots > 0"
    if with_room_only:
        where += f" AND {_HELD} < ({_SLOTS})"
        params += slots_params
    if needed is not None:
        patterns = sorted({p for name in needed for p in _naming(name)})
        where += " AND (" + " OR ".join(["d.models LIKE ? ESCAPE '\\'"] * len(patterns)) + ")"
        params += patterns
    out = []
    stale_s = settings.stale_after_heartbeats
    # Rows unpacked by position: a pass reads every online device with room, and each
    # lookup by column name cost more than the rest of the loop.
    for (
        device_id,
        labels,
        models,
        load,
        last_heartbeat,
        interval,
        latency_ms,
        concurrency,
        slots,
        held,
    ) in db.execute(
        f"""SELECT d.device_id, d.labels, d.models, d.load, d.last_heartbeat,
                d.heartbeat_interval, d.task_latency_ms, {_CONCURRENCY}, {_SLOTS}, {_HELD}
            FROM devices d WHERE {where}""",  # noqa: S608 - only fixed fragments; values are bound
        params,
    ).fetchall():
        cpu_percent = temperature_c = None
        if last_heartbeat is not None and now - last_heartbeat <= stale_s * (interval or 0):
            cpu_percent, temperature_c = _load_of(load)
        out.append(
            Candidate(
                device_id=device_id,
                labels=_labels_of(labels),
                models=_ready_models_of(models),
                slots=slots,
                concurrency=concurrency,
                held=held,
                cpu_percent=cpu_percent,
                temperature_c=temperature_c,
                latency_ms=latency_ms,
            )
        )
    return out


def _naming(name: str) -> set[str]:
    """LIKE patterns that match a device's models text naming the model `name`: its
    JSON string as the hub writes it (json.dumps, non-ASCII escaped) and as UTF-8. A
    text naming it otherwise (as a version or an error) matches too: a row read for
    nothing, never a device left out."""
    forms = {json.dumps(name), json.dumps(name, ensure_ascii=False)}
    return {
        "%" + f.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for f in forms
    }


# A pass reads every online device's row: 25,000 rows took 250 ms, 110 of it parsing
# their JSON. Labels and model lists repeat across a fleet and rarely change, so each
# distinct text is parsed once (the parsed values are shared: the planner only reads
# them); of the load, changed by every heartbeat, only the two numbers the planner
# uses are decoded.
@functools.lru_cache(maxsize=4096)
def _labels_of(text: str) -> dict[str, str]:
    return cast(dict[str, str], json.loads(text))


@functools.lru_cache(maxsize=4096)
def _ready_models_of(text: str | None) -> frozenset[tuple[str, str]]:
    return frozenset(
        (m["name"], m["version"]) for m in json.loads(text or "[]") if m.get("state") == "ready"
    )


class _Load(msgspec.Struct):
    cpu_percent: float | msgspec.UnsetType | None = msgspec.UNSET
    temperature_c: float | msgspec.UnsetType | None = msgspec.UNSET


_LOAD = msgspec.json.Decoder(_Load)


def _load_of(text: str | None) -> tuple[float | None, float | None]:
    """A fresh load's CPU and temperature; both None when it names no CPU."""
    try:
        load = _LOAD.decode(text or "{}")
    except msgspec.DecodeError:  # not the shape the hub writes: read it as before
        loose = json.loads(text or "{}")
        if "cpu_percent" not in loose:
            return None, None
        return loose.get("cpu_percent"), loose.get("temperature_c")
    if load.cpu_percent is msgspec.UNSET:
        return None, None
    temperature = None if load.temperature_c is msgspec.UNSET else load.temperature_c
    return load.cpu_percent, temperature


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
