"""Metric roll-ups at the hub: each newly stored roll-up of a device's metrics stream is
folded (modelfold.py) into hourly statistics per device, model and version (count,
confidence bins, label counts, latency buckets), hourly error counts per device, and each
device's latest store fill; a window of `WINDOW_S` is kept. This module holds the tables'
shapes and what reads them.

Records come from devices: every field is checked as it is read, and sizes are capped
(models per roll-up, labels per model, name lengths), so a device cannot grow the tables
or the hub's series beyond a bound. Each function runs inside the caller's transaction.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from hub.store.sql import Sql
from outpost import rollup

WINDOW_S = 7 * 86400  # hourly statistics kept this long
HOUR_S = 3600
FUTURE_SLACK_S = 3600  # a roll-up stamped later than this ahead of the hub: stamped now
MAX_MODELS = 32  # model versions taken from one roll-up
MAX_NAME = 128  # characters of a model name, version or label
STREAMS = ("results", "events", "metrics")
BINS = rollup.CONFIDENCE_BINS

# The JSON columns: written with sorted keys, compact; msgspec's codec costs a fraction of
# the standard library's, and folding runs once per roll-up of every device.
_ENCODER = msgspec.json.Encoder(order="sorted")
decode_json = msgspec.json.decode


def encode_json(value: Any) -> str:
    return _ENCODER.encode(value).decode()


@dataclasses.dataclass
class ModelTotals:
    """Counts of one model (all versions) over some roll-ups."""

    count: int = 0
    latency_ms: dict[str, int] = dataclasses.field(default_factory=dict)
    latency_sum_ms: float = 0.0
    confidence: list[int] = dataclasses.field(default_factory=lambda: [0] * rollup.CONFIDENCE_BINS)
    confidence_sum: float = 0.0

    def add(self, other: ModelTotals) -> None:
        self.add_counts(vars(other))  # the same names as a roll-up's counts

    def add_counts(self, stats: dict[str, Any]) -> None:
        """Add one model version's checked counts, in the roll-up's shape
        (rollupread.py)."""
        self.count += stats["count"]
        self.latency_sum_ms += stats["latency_sum_ms"]
        self.confidence_sum += stats["confidence_sum"]
        latency = self.latency_ms
        for le, n in stats["latency_ms"].items():
            latency[le] = latency.get(le, 0) + n
        bins = self.confidence
        for i, n in enumerate(stats["confidence"]):
            bins[i] += n


@dataclasses.dataclass
class Folded:
    """What newly stored roll-ups added: per model name, and errors by reason."""

    models: dict[str, ModelTotals] = dataclasses.field(default_factory=dict)
    errors: dict[str, int] = dataclasses.field(default_factory=dict)
    rollups: int = 0
    added_hours: bool = False  # statistics were written: the window wants pruning

    def add(self, other: Folded) -> None:
        self.rollups += other.rollups
        self.added_hours = self.added_hours or other.added_hours
        for name, totals in other.models.items():
            self.models.setdefault(name, ModelTotals()).add(totals)
        for reason, n in other.errors.items():
            self.errors[reason] = self.errors.get(reason, 0) + n


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One device's inferences of one model version over a span of hours."""

    count: int
    confidence: list[int]
    labels: dict[str, int]


def prune(db: Sql, now: float) -> None:
    """Drop the hours older than the window (once per batch of uploads, not per device)."""
    oldest = hour_of(now - WINDOW_S)
    db.execute("DELETE FROM model_stats WHERE hour < ?", (oldest,))
    db.execute("DELETE FROM device_errors WHERE hour < ?", (oldest,))


class Sums:
    """Per model version, each device's inferences summed over the hours added so far."""

    def __init__(self) -> None:
        self._sums: dict[tuple[str, str], dict[str, tuple[int, list[int], dict[str, int]]]] = {}
        self._hours: set[int] = set()

    def add(self, hour: int, rows: list[Any]) -> None:
        """`hour`'s rows of (model, version, device_id, count, confidence, labels); an hour
        given again is not added twice (a unit of work retried after it ran)."""
        if hour in self._hours:
            return
        self._hours.add(hour)
        for model, version, device_id, count, confidence, labels in rows:
            per_device = self._sums.setdefault((model, version), {})
            total, bins, label_counts = per_device.get(
                device_id, (0, [0] * rollup.CONFIDENCE_BINS, {})
            )
            for i, n in enumerate(decode_json(confidence)):
                bins[i] += n
            for label, n in decode_json(labels).items():
                label_counts[label] = label_counts.get(label, 0) + n
            per_device[device_id] = (total + count, bins, label_counts)

    def drop(self, devices: set[str]) -> None:
        """Leave `devices` out of every model version's sums (and a version only they ran)."""
        for key, per_device in list(self._sums.items()):
            for device_id in devices & per_device.keys():
                del per_device[device_id]
            if not per_device:
                del self._sums[key]

    def distributions(self) -> dict[tuple[str, str], dict[str, Distribution]]:
        return {
            key: {d: Distribution(*v) for d, v in per_device.items()}
            for key, per_device in self._sums.items()
        }


def hours_since(db: Sql, since: float) -> list[int]:
    """The hours from `since` on that hold statistics (by the hour's index)."""
    rows = db.execute(
        "SELECT DISTINCT hour FROM model_stats WHERE hour >= ? ORDER BY hour", (hour_of(since),)
    ).fetchall()
    return [int(hour) for (hour,) in rows]


def add_hour(db: Sql, sums: Sums, hour: int) -> None:
    """Add each device's inferences of `hour` to `sums` (revoked ones are dropped once the
    day is read: `revoked_devices`)."""
    sums.add(
        hour,
        db.execute(
            """SELECT model, version, device_id, count, confidence, labels FROM model_stats
               WHERE hour = ?""",
            (hour,),
        ).fetchall(),
    )


def revoked_devices(db: Sql) -> set[str]:
    """Every revoked device's id."""
    rows = db.execute("SELECT device_id FROM devices WHERE revoked_at IS NOT NULL").fetchall()
    return {device_id for (device_id,) in rows}


def device_errors(db: Sql, device_id: str, since: float) -> dict[str, int]:
    """A device's errors by reason in the hours from `since`."""
    totals: dict[str, int] = {}
    for (errors,) in db.execute(
        "SELECT errors FROM device_errors WHERE device_id = ? AND hour >= ?",
        (device_id, hour_of(since)),
    ).fetchall():
        for reason, n in decode_json(errors).items():
            totals[reason] = totals.get(reason, 0) + n
    return totals


def stores_over(db: Sql, threshold: float) -> dict[str, int]:
    """Per stream: unrevoked devices whose latest roll-up put its fill above `threshold`."""
    over = dict.fromkeys(STREAMS, 0)
    for (store,) in db.execute(
        """SELECT h.store FROM device_health h JOIN devices d USING (device_id)
           WHERE d.revoked_at IS NULL"""
    ).fetchall():
        for stream, fill in decode_json(store).items():
            if stream in over and fill > threshold:
                over[stream] += 1
    return over


def hour_of(ts: float) -> int:
    """The hour `ts` falls in, as the statistics key it (seconds since the epoch)."""
    return int(ts // HOUR_S) * HOUR_S
