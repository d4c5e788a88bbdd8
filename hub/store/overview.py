"""The fleet at a glance, for the live dashboard: read in one unit of work per tick.

Everything is bounded: at most `max_devices` devices, the newest `max_rollouts`
roll-outs, and at most `max_events` task transitions since the previous read (the read
goes on from where it stopped on the next tick).

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.store import rollouts, shadows
from hub.store.devices import Device
from hub.store.rollouts import Rollout
from hub.store.sql import Sql
from hub.store.tasks import TERMINAL


@dataclass(frozen=True)
class PolicyVersions:
    """The policy version published to a device, and the ones it applied and refused."""

    published: int
    applied: int
    rejected: int


@dataclass(frozen=True)
class Finished:
    """Tasks of one model that ended since the previous read, by state."""

    model: str
    states: dict[str, int]
    latency_ms_sum: float  # of the results that reported a latency
    latency_count: int


@dataclass(frozen=True)
class Overview:
    devices: list[Device]
    devices_total: int
    devices_online: int
    policy: dict[str, PolicyVersions]
    task_states: dict[str, int]
    finished: list[Finished]
    cursor: int  # the last task transition read: where the next read starts
    rollouts: list[Rollout]
    shadows: dict[int, dict[str, Any]]  # shadow roll-outs in progress: their comparison


def read(
    db: Sql,
    after: int | None,
    max_devices: int,
    max_rollouts: int,
    max_events: int,
) -> Overview:
    """The fleet now, and the tasks that ended after the transition `after` (None: the
    first read, which only finds where to start)."""
    # One read transaction: every part of the picture is of the same moment.
    with db.snapshot():
        total, online = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(online), 0) FROM devices"
        ).fetchone()
        devices = [
            Device.from_row(r)
            for r in db.execute(
                "SELECT * FROM devices ORDER BY device_id LIMIT ?", (max_devices,)
            ).fetchall()
        ]
        ids = [d.device_id for d in devices]
        # No devices, no query: PostgreSQL refuses an empty `IN ()`, which SQLite takes.
        policy = {
            r[0]: PolicyVersions(published=r[1], applied=r[2], rejected=r[3])
            for r in (
                db.execute(
                    f"""SELECT device_id, version, applied_version, rejected_version
                    FROM device_policy WHERE device_id IN ({", ".join("?" * len(ids))})""",  # noqa: S608 - placeholders only; values are bound
                    ids,
                ).fetchall()
                if ids
                else []
            )
        }
        states = {
            r[0]: r[1]
            for r in db.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state").fetchall()
        }
        cursor, finished = _finished(db, after, max_events)
        recent = [
            rollouts.get_rollout(db, r.id) for r in rollouts.list_rollouts(db, limit=max_rollouts)
        ]
        compared = {
            r.id: found
            for r in recent
            if r is not None
            and r.state == "shadow"
            and (found := shadows.summary(db, r.id)) is not None
        }
    return Overview(
        devices=devices,
        devices_total=int(total),
        devices_online=int(online),
        policy=policy,
        task_states=states,
        finished=finished,
        cursor=cursor,
        rollouts=[r for r in recent if r is not None],
        shadows=compared,
    )


def _finished(db: Sql, after: int | None, limit: int) -> tuple[int, list[Finished]]:
    """Tasks that ended after the transition `after`, per model: a range of the
    transitions' primary key, so a tick costs what happened since the last one."""
    if after is None:
        (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM task_events").fetchone()
        return int(last), []
    rows = db.execute(
        f"""SELECT e.id, e.state, t.model, {db.json_number("t.result", "latency_ms")}
            FROM task_events e JOIN tasks t ON t.task_id = e.task_id
            WHERE e.id > ? AND e.state IN ({", ".join("?" * len(TERMINAL))})
            ORDER BY e.id LIMIT ?""",  # noqa: S608 - placeholders only; values are bound
        (after, *TERMINAL, limit),
    ).fetchall()
    if len(rows) < limit:
        # Nothing more ended: move past the other transitions too (they are not read).
        (last,) = db.execute("SELECT COALESCE(MAX(id), ?) FROM task_events", (after,)).fetchone()
    else:
        last = rows[-1][0]
    per_model: dict[str, tuple[dict[str, int], float, int]] = {}
    for _, state, model, latency in rows:
        states, total, count = per_model.get(model, ({}, 0.0, 0))
        states[state] = states.get(state, 0) + 1
        if isinstance(latency, int | float) and state == "succeeded":
            total, count = total + float(latency), count + 1
        per_model[model] = (states, total, count)
    return max(int(last), after), [
        Finished(model, states, total, count)
        for model, (states, total, count) in sorted(per_model.items())
    ]
