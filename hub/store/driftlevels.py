"""The drift level last seen per device and model version (hub/models/drift.py judges it;
hub/models/driftwatch.py looks every so often). Each change of level is an event,
`org.outpost.drift.changed`, written in the transaction that records the new level: so
it is published once, whichever replica leads, and never again after a restart.

A device with no level recorded is `insufficient` (too few inferences to judge): a
device that leaves the window (no inferences for a day, or revoked) goes back to it, and
its row goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.store import outbox
from hub.store.sql import Sql

UNJUDGED = "insufficient"


@dataclass(frozen=True)
class Judged:
    """One device's drift on one model version, as the last look found it."""

    model: str
    version: str
    device_id: str
    level: str  # stable, moderate, drift or insufficient
    psi_labels: float | None
    psi_confidence: float | None
    count: int  # its inferences in the window


@dataclass(frozen=True)
class LevelChange:
    model: str
    version: str
    device_id: str
    previous: str
    level: str


def record(db: Sql, judged: Sequence[Judged], now: float) -> list[LevelChange]:
    """Keep each device's new level; publish and return the changes."""
    with db.write():
        return _record(db, judged, now)


def _record(db: Sql, judged: Sequence[Judged], now: float) -> list[LevelChange]:
    known = {
        (model, version, device_id): level
        for model, version, device_id, level in db.execute(
            "SELECT model, version, device_id, level FROM drift_levels"
        ).fetchall()
    }
    seen = {(j.model, j.version, j.device_id): j for j in judged}
    for key in known.keys() - seen.keys():  # left the window: unjudged again
        seen[key] = Judged(*key, UNJUDGED, None, None, 0)
    changes: list[LevelChange] = []
    events = []
    for key, now_judged in sorted(seen.items()):
        previous = known.get(key, UNJUDGED)
        if previous == now_judged.level:
            continue
        changes.append(LevelChange(*key, previous, now_judged.level))
        model, version, device_id = key
        events.append(
            (
                "drift.changed",
                device_id,
                {
                    "model": model,
                    "version": version,
                    "previous": previous,
                    "level": now_judged.level,
                    "psi_labels": now_judged.psi_labels,
                    "psi_confidence": now_judged.psi_confidence,
                    "count": now_judged.count,
                },
                now,
            )
        )
    gone = [(c.model, c.version, c.device_id) for c in changes if c.level == UNJUDGED]
    kept = [(c.model, c.version, c.device_id, c.level, now) for c in changes if c.level != UNJUDGED]
    if gone:
        db.executemany(
            "DELETE FROM drift_levels WHERE model = ? AND version = ? AND device_id = ?", gone
        )
    if kept:
        db.executemany(
            "INSERT INTO drift_levels (model, version, device_id, level, changed_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, version, device_id)"
            " DO UPDATE SET level = excluded.level, changed_at = excluded.changed_at",
            kept,
        )
    outbox.emit_many(db, events)
    return changes
