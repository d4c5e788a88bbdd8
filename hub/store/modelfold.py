"""Folding roll-ups into the statistics (modelstats.py): every roll-up of a batch of
uploads is read as it is stored, and what they add is written once, when the batch ends.

One read and one write per table for a whole batch, instead of a read and a write per
roll-up: the statements were most of what folding cost (`./scripts/bench --only
monitoring`). Roll-ups come from devices: every field is checked as it is read
(rollupread.py), and sizes are capped, so a device cannot grow the tables beyond a bound.
"""

from __future__ import annotations

from collections.abc import Iterable

from hub.store import rollupread, shadows
from hub.store.modelstats import (
    BINS,
    FUTURE_SLACK_S,
    WINDOW_S,
    Folded,
    ModelTotals,
    decode_json,
    encode_json,
    hour_of,
)
from hub.store.rollupread import Stats
from hub.store.sql import Sql, chunked, marks
from outpost import rollup


class Folder:
    """The roll-ups of one batch of uploads: `add` as each upload is stored, `write` once
    after the last (in the same transaction)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.folded = Folded()
        self._hourly: dict[tuple[str, str, int, str], Stats] = {}
        self._errors: dict[tuple[str, int], dict[str, int]] = {}
        self._latest: dict[str, tuple[float, rollupread.Checked]] = {}

    def add(self, db: Sql, device_id: str, rows: Iterable[tuple[int, float, bytes]]) -> None:
        """Take in the roll-ups among a device's newly stored metrics records."""
        folded, now = self.folded, self.now
        oldest = hour_of(now - WINDOW_S)
        for _, ts, body in rows:
            checked = rollupread.read(body)
            if checked is None:
                continue
            folded.rollups += 1
            if checked.shadow is not None:
                shadows.fold(db, device_id, checked.shadow, now)
            ts = ts if ts <= now + FUTURE_SLACK_S else now
            hour = hour_of(ts)
            models, errors = checked.models, checked.errors
            for key, stats in models.items():
                name, _ = rollup.split_model_key(key)
                totals = folded.models.get(name)
                if totals is None:
                    totals = folded.models[name] = ModelTotals()
                totals.add_counts(stats)
            for reason, n in errors.items():
                folded.errors[reason] = folded.errors.get(reason, 0) + n
            # The device's latest health before the window's cut: a store fill is news
            # whatever its clock says. Stamped before the window (a clock far behind, or
            # a late delivery), it is ordered as the window's start: after every fill the
            # window holds, and still moving on with the hub's clock.
            health_ts = max(ts, now - WINDOW_S)
            latest = self._latest.get(device_id)
            if latest is None or health_ts >= latest[0]:
                self._latest[device_id] = (health_ts, checked)
            if hour < oldest:
                continue  # counted, but older than the statistics keep
            folded.added_hours = True
            for key, stats in models.items():
                name, version = rollup.split_model_key(key)
                slot = self._hourly.get((name, version, hour, device_id))
                if slot is None:  # the read's own counts: no one else holds them
                    self._hourly[(name, version, hour, device_id)] = stats
                else:
                    _merge_checked(slot, stats)
            if errors:
                hour_errors = self._errors.setdefault((device_id, hour), {})
                for reason, n in errors.items():
                    hour_errors[reason] = hour_errors.get(reason, 0) + n

    def write(self, db: Sql) -> None:
        """Add what the batch's roll-ups hold to the statistics."""
        if self._hourly:
            _write_hours(db, self._hourly)
        if self._errors:
            _write_errors(db, self._errors)
        if self._latest:
            _write_health(db, self._latest)


def _write_hours(db: Sql, hourly: dict[tuple[str, str, int, str], Stats]) -> None:
    groups: dict[tuple[str, str, int], list[str]] = {}
    for name, version, hour, device_id in hourly:
        groups.setdefault((name, version, hour), []).append(device_id)
    for (name, version, hour), devices in groups.items():
        for chunk in chunked(devices):
            found = db.execute(
                f"""SELECT device_id, count, confidence, labels, latency, latency_sum_ms
                    FROM model_stats WHERE model = ? AND version = ? AND hour = ?
                    AND device_id IN ({marks(len(chunk))})""",  # noqa: S608 - only placeholders
                (name, version, hour, *chunk),
            ).fetchall()
            for device_id, count, confidence, labels, latency, latency_sum_ms in found:
                key = (name, version, hour, device_id)
                bins = decode_json(confidence)
                before = {
                    "count": count,
                    "confidence": bins + [0] * (BINS - len(bins)),
                    "labels": decode_json(labels),
                    "latency_ms": decode_json(latency),
                    "latency_sum_ms": latency_sum_ms,
                    "confidence_sum": 0.0,  # not kept by the hour: the bins are
                }
                _merge_checked(before, hourly[key])
                hourly[key] = before
    for stats in hourly.values():
        # Ever new labels, from the row kept or from several roll-ups of this batch (a
        # row made new here was left uncapped): the most counted stay, the rest "other".
        stats["labels"] = rollupread.capped_labels(stats["labels"])
    db.executemany(
        """INSERT INTO model_stats
               (model, version, hour, device_id, count, confidence, labels, latency,
                latency_sum_ms)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (model, version, hour, device_id) DO UPDATE SET
               count = excluded.count, confidence = excluded.confidence,
               labels = excluded.labels, latency = excluded.latency,
               latency_sum_ms = excluded.latency_sum_ms""",
        [
            (
                *key,
                stats["count"],
                encode_json(stats["confidence"]),
                encode_json(stats["labels"]),
                encode_json(stats["latency_ms"]),
                stats["latency_sum_ms"],
            )
            for key, stats in hourly.items()
        ],
    )


def _write_errors(db: Sql, errors: dict[tuple[str, int], dict[str, int]]) -> None:
    by_hour: dict[int, list[str]] = {}
    for device_id, hour in errors:
        by_hour.setdefault(hour, []).append(device_id)
    totals: dict[tuple[str, int], dict[str, int]] = {}
    for hour, devices in by_hour.items():
        for chunk in chunked(devices):
            for device_id, stored in db.execute(
                f"SELECT device_id, errors FROM device_errors WHERE hour = ? "  # noqa: S608 - only placeholders
                f"AND device_id IN ({marks(len(chunk))})",
                (hour, *chunk),
            ).fetchall():
                totals[(device_id, hour)] = decode_json(stored)
    rows = []
    for key, added in errors.items():
        total = totals.get(key, {})
        for reason, n in added.items():
            total[reason] = total.get(reason, 0) + n
        rows.append((*key, encode_json(total)))
    db.executemany(
        """INSERT INTO device_errors (device_id, hour, errors) VALUES (?, ?, ?)
           ON CONFLICT (device_id, hour) DO UPDATE SET errors = excluded.errors""",
        rows,
    )


def _write_health(db: Sql, latest: dict[str, tuple[float, rollupread.Checked]]) -> None:
    """Keep each device's newest roll-up's store fill and task depths (an older one than
    the table holds changes nothing)."""
    db.executemany(
        """INSERT INTO device_health (device_id, ts, store, tasks) VALUES (?, ?, ?, ?)
           ON CONFLICT (device_id) DO UPDATE SET
               ts = excluded.ts, store = excluded.store, tasks = excluded.tasks
           WHERE excluded.ts >= device_health.ts""",
        [
            (device_id, ts, encode_json(checked.fills), encode_json(checked.depths))
            for device_id, (ts, checked) in latest.items()
        ],
    )


def _merge_checked(into: Stats, more: Stats) -> None:
    """`rollup.merge_models` for one model's counts that were checked already (by
    rollupread.py, or as the statistics hold them): sums, with no value checked again. A
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
