"""Metric roll-ups at the hub: each newly stored roll-up of a device's metrics stream
folded into hourly statistics per device, model and version (count, confidence bins,
label counts, latency buckets), hourly error counts per device, and each device's latest
store fill; a window of `WINDOW_S` is kept.

Records come from devices: every field is checked as it is read, and sizes are capped
(models per roll-up, labels per model, name lengths), so a device cannot grow the tables
or the hub's series beyond a bound. Each function runs inside the caller's transaction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import msgspec

from hub.store import shadows
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
_loads = msgspec.json.decode


def _dumps(value: Any) -> str:
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
        self.count += other.count
        self.latency_sum_ms += other.latency_sum_ms
        self.confidence_sum += other.confidence_sum
        for le, n in other.latency_ms.items():
            self.latency_ms[le] = self.latency_ms.get(le, 0) + n
        for i, n in enumerate(other.confidence):
            self.confidence[i] += n


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


def fold(
    db: Sql,
    device_id: str,
    rows: Iterable[tuple[int, float, bytes]],
    now: float,
) -> Folded:
    """Fold the roll-ups among newly stored metrics records into the statistics."""
    folded = Folded()
    oldest = _hour(now - WINDOW_S)
    hourly: dict[tuple[str, str, int], dict[str, Any]] = {}
    errors_by_hour: dict[int, dict[str, int]] = {}
    latest: tuple[float, dict[str, Any]] | None = None
    for _, ts, body in rows:
        if rollup.KIND.encode() not in body:  # other metrics: skip the decode
            continue
        try:
            data = msgspec.msgpack.decode(body)
        except (ValueError, RecursionError):
            continue
        if not isinstance(data, dict) or data.get("kind") != rollup.KIND:
            continue
        folded.rollups += 1
        if "shadow" in data:
            shadows.fold(db, device_id, data["shadow"], now)
        ts = ts if ts <= now + FUTURE_SLACK_S else now
        hour = _hour(ts)
        models = _models(data.get("models"))
        errors = _errors(data.get("errors"))
        for key, stats in models.items():
            name, _ = rollup.split_model_key(key)
            folded.models.setdefault(name, ModelTotals()).add(_totals(stats))
        for reason, n in errors.items():
            folded.errors[reason] = folded.errors.get(reason, 0) + n
        if hour < oldest:
            continue  # counted, but older than the statistics keep
        for key, stats in models.items():
            name, version = rollup.split_model_key(key)
            slot = hourly.get((name, version, hour))
            if slot is None:
                hourly[(name, version, hour)] = _copy(stats)
            else:
                _merge_checked(slot, stats)
        hour_errors = errors_by_hour.setdefault(hour, {})
        for reason, n in errors.items():
            hour_errors[reason] = hour_errors.get(reason, 0) + n
        if latest is None or ts >= latest[0]:
            latest = (ts, data)
    for (name, version, hour), merged in hourly.items():
        _add_hour(db, device_id, name, version, hour, merged)
    for hour, errors in errors_by_hour.items():
        if errors:
            _add_errors(db, device_id, hour, errors)
    if latest is not None:
        _set_health(db, device_id, *latest)
    folded.added_hours = bool(hourly or errors_by_hour)
    return folded


def prune(db: Sql, now: float) -> None:
    """Drop the hours older than the window (once per batch of uploads, not per device)."""
    oldest = _hour(now - WINDOW_S)
    db.execute("DELETE FROM model_stats WHERE hour < ?", (oldest,))
    db.execute("DELETE FROM device_errors WHERE hour < ?", (oldest,))


def distributions(db: Sql, since: float) -> dict[tuple[str, str], dict[str, Distribution]]:
    """Per model version, each unrevoked device's inferences in the hours from `since`."""
    sums: dict[tuple[str, str], dict[str, tuple[int, list[int], dict[str, int]]]] = {}
    rows = db.execute(
        """SELECT model, version, device_id, count, confidence, labels FROM model_stats
           WHERE hour >= ? AND device_id NOT IN
               (SELECT device_id FROM devices WHERE revoked_at IS NOT NULL)""",
        (_hour(since),),
    ).fetchall()
    for model, version, device_id, count, confidence, labels in rows:
        per_device = sums.setdefault((model, version), {})
        total, bins, label_counts = per_device.get(device_id, (0, [0] * rollup.CONFIDENCE_BINS, {}))
        for i, n in enumerate(_loads(confidence)):
            bins[i] += n
        for label, n in _loads(labels).items():
            label_counts[label] = label_counts.get(label, 0) + n
        per_device[device_id] = (total + count, bins, label_counts)
    return {
        key: {d: Distribution(*v) for d, v in per_device.items()}
        for key, per_device in sums.items()
    }


def device_errors(db: Sql, device_id: str, since: float) -> dict[str, int]:
    """A device's errors by reason in the hours from `since`."""
    totals: dict[str, int] = {}
    for (errors,) in db.execute(
        "SELECT errors FROM device_errors WHERE device_id = ? AND hour >= ?",
        (device_id, _hour(since)),
    ).fetchall():
        for reason, n in _loads(errors).items():
            totals[reason] = totals.get(reason, 0) + n
    return totals


def stores_over(db: Sql, threshold: float) -> dict[str, int]:
    """Per stream: unrevoked devices whose latest roll-up put its fill above `threshold`."""
    over = dict.fromkeys(STREAMS, 0)
    for (store,) in db.execute(
        """SELECT h.store FROM device_health h JOIN devices d USING (device_id)
           WHERE d.revoked_at IS NULL"""
    ).fetchall():
        for stream, fill in _loads(store).items():
            if stream in over and fill > threshold:
                over[stream] += 1
    return over


def _hour(ts: float) -> int:
    return int(ts // HOUR_S) * HOUR_S


def _models(value: Any) -> dict[str, dict[str, Any]]:
    """The well-formed model entries of a roll-up, at most `MAX_MODELS`."""
    if not isinstance(value, dict):
        return {}
    kept: dict[str, dict[str, Any]] = {}
    for key, stats in value.items():
        if len(kept) >= MAX_MODELS:
            break
        if not isinstance(key, str) or not isinstance(stats, dict) or len(key) > 2 * MAX_NAME:
            continue
        name, version = rollup.split_model_key(key)
        if not name or len(name) > MAX_NAME or len(version) > MAX_NAME:
            continue
        if rollup.count(stats.get("count")) == 0:
            continue
        labels = rollup.counts_of(stats.get("labels"))[: rollup.MAX_LABELS]
        latency = [(le, n) for le, n in rollup.counts_of(stats.get("latency_ms"))]
        given = stats.get("confidence")
        bins = [rollup.count(n) for n in given[:BINS]] if isinstance(given, list) else []
        kept[key] = {
            "count": stats["count"],
            "latency_ms": {le: n for le, n in latency if le in rollup.BUCKET_KEYS},
            "latency_sum_ms": rollup.number(stats.get("latency_sum_ms")),
            "confidence": bins + [0] * (BINS - len(bins)),
            "confidence_sum": rollup.number(stats.get("confidence_sum")),
            "labels": {label[:MAX_NAME]: n for label, n in labels},
        }
    return kept


def _copy(stats: dict[str, Any]) -> dict[str, Any]:
    """A model's checked counts, its maps and bins copied (merging adds into them)."""
    return {
        **stats,
        "latency_ms": dict(stats["latency_ms"]),
        "confidence": list(stats["confidence"]),
        "labels": dict(stats["labels"]),
    }


def _merge_checked(into: dict[str, Any], more: dict[str, Any]) -> None:
    """`rollup.merge_models` for one model's counts that were checked already (by
    `_models`, or as the statistics hold them): sums, with no value checked again. A
    roll-up is merged up to three times as it is folded; checking each value every time
    was most of the folding's cost (`./scripts/bench --only monitoring`)."""
    into["count"] += more["count"]
    into["latency_sum_ms"] += more["latency_sum_ms"]
    into["confidence_sum"] += more["confidence_sum"]
    latency, labels, bins = into["latency_ms"], into["labels"], into["confidence"]
    for le, n in more["latency_ms"].items():
        latency[le] = latency.get(le, 0) + n
    for i, n in enumerate(more["confidence"]):
        bins[i] += n
    for label, n in more["labels"].items():
        labels[label] = labels.get(label, 0) + n


def _errors(value: Any) -> dict[str, int]:
    errors: dict[str, int] = {}
    for reason, n in rollup.counts_of(value):
        known = reason if reason in rollup.ERROR_REASONS else rollup.OTHER
        errors[known] = errors.get(known, 0) + n
    return errors


def _totals(stats: dict[str, Any]) -> ModelTotals:
    """A model's checked counts (`_models`) as totals."""
    return ModelTotals(
        count=stats["count"],
        latency_ms=dict(stats["latency_ms"]),
        latency_sum_ms=stats["latency_sum_ms"],
        confidence=list(stats["confidence"]),
        confidence_sum=stats["confidence_sum"],
    )


def _add_hour(
    db: Sql,
    device_id: str,
    name: str,
    version: str,
    hour: int,
    stats: dict[str, Any],
) -> None:
    key = (name, version, hour, device_id)
    row = db.execute(
        """SELECT count, confidence, labels, latency, latency_sum_ms FROM model_stats
           WHERE model = ? AND version = ? AND hour = ? AND device_id = ?""",
        key,
    ).fetchone()
    if row is not None:
        bins = _loads(row[1])
        before = {
            "count": row[0],
            "confidence": bins + [0] * (BINS - len(bins)),
            "labels": _loads(row[2]),
            "latency_ms": _loads(row[3]),
            "latency_sum_ms": row[4],
            "confidence_sum": 0.0,  # not kept by the hour: the bins are
        }
        _merge_checked(before, stats)
        stats = before
        if len(stats["labels"]) > rollup.MAX_LABELS:  # a device naming ever new labels
            stats["labels"] = dict(
                sorted(stats["labels"].items(), key=lambda kv: -kv[1])[: rollup.MAX_LABELS]
            )
    db.execute(
        """INSERT INTO model_stats
               (model, version, hour, device_id, count, confidence, labels, latency,
                latency_sum_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (model, version, hour, device_id) DO UPDATE SET
               count = excluded.count, confidence = excluded.confidence,
               labels = excluded.labels, latency = excluded.latency,
               latency_sum_ms = excluded.latency_sum_ms""",
        (
            *key,
            stats["count"],
            _dumps(stats["confidence"]),
            _dumps(stats["labels"]),
            _dumps(stats["latency_ms"]),
            stats["latency_sum_ms"],
        ),
    )


def _add_errors(db: Sql, device_id: str, hour: int, errors: dict[str, int]) -> None:
    row = db.execute(
        "SELECT errors FROM device_errors WHERE device_id = ? AND hour = ?", (device_id, hour)
    ).fetchone()
    total = _loads(row[0]) if row else {}
    for reason, n in errors.items():
        total[reason] = total.get(reason, 0) + n
    db.execute(
        """INSERT INTO device_errors (device_id, hour, errors) VALUES (?, ?, ?)
           ON CONFLICT (device_id, hour) DO UPDATE SET errors = excluded.errors""",
        (device_id, hour, _dumps(total)),
    )


def _set_health(db: Sql, device_id: str, ts: float, data: dict[str, Any]) -> None:
    """Keep the newest roll-up's store fill and task depths (an older one changes nothing)."""
    store = data.get("store")
    fills = {}
    if isinstance(store, dict):
        for stream in STREAMS:
            entry = store.get(stream)
            if isinstance(entry, dict):
                fill = rollup.number(entry.get("fill"))
                fills[stream] = min(1.0, fill) if math.isfinite(fill) else 0.0
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    depths = {k: rollup.count(tasks.get(k)) for k in ("queued", "running")} if tasks else {}
    db.execute(
        """INSERT INTO device_health (device_id, ts, store, tasks) VALUES (?, ?, ?, ?)
           ON CONFLICT (device_id) DO UPDATE SET
               ts = excluded.ts, store = excluded.store, tasks = excluded.tasks
           WHERE excluded.ts >= device_health.ts""",
        (device_id, ts, _dumps(fills), _dumps(depths)),
    )
