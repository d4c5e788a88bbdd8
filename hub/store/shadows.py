"""Shadow roll-outs: a candidate model version runs beside the live one on the devices of
a roll-out, never serving, and the roll-out is judged on what the devices report.

A shadow roll-out (rollouts.mode = 'shadow') stays in state `shadow` while its devices
compare; its rows are `shadowing`, and stay out of what a device serves (rollouts.py's
`_desired` skips the roll-out). Devices report comparisons in their metric roll-ups
(`outpost.rollup`, section `shadow`), folded here per candidate, live version and
device. `judge` applies each roll-out's criteria once it has `min_samples`:

- met: it becomes a staged roll-out (state `canary`, its canaries released), as if it
  had been started so;
- not met: it stops (state `stopped`) with the figures that failed.

The latency compared is CPU time: what each side's threads spent on the same inputs. A
candidate runs at the lowest CPU priority, so on a busy machine its wall time mostly
measures its wait for a CPU (a clean-clone run read 3.25x for a candidate identical to
the live version); its CPU time does not. Comparisons from agents that do not report CPU
time fall back to wall time, and the summary says which it used (`latency_basis`). CPU
times compare like with like at equal thread counts: a candidate runs on one thread, and
a live version on N > 1 spends more CPU than one thread would on the same work (their
synchronisation), so the ratio then reads low (the demo's 3-thread live version: 0.60
for an identical candidate); the reason names the thread counts when they differ.

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from hub.store.rolloutprogress import advance, announce, take_over
from hub.store.sql import Sql, storable_text
from outpost import rollup

DEFAULT_CRITERIA: dict[str, float] = {
    "agreement_min": 0.97,
    "latency_ratio_max": 1.2,
    "min_samples": 500,
}


@dataclass(frozen=True)
class Judged:
    """A shadow roll-out the criteria decided: promoted (its canaries released) or
    stopped; every one of its devices must be told (their shadow goes)."""

    rollout_id: int
    state: str  # canary (promoted) | stopped
    reason: str
    released: list[str]
    devices: list[str]


def fold(db: Sql, device_id: str, section: Any, now: float) -> None:
    """Add a roll-up's `shadow` section to the device's comparisons. Only candidates of a
    shadow roll-out in progress are kept: a device cannot grow the table at will."""
    for key, stats in rollup.mapping(section).items():
        name, candidate = rollup.split_model_key(key)
        if not isinstance(stats, dict) or not isinstance(stats.get("live"), str):
            continue
        if not storable_text(key) or not storable_text(stats["live"]):
            continue  # no roll-out is named so; binding it fails on one back-end
        if not db.execute(
            "SELECT 1 FROM rollouts WHERE name = ? AND version = ? AND state = 'shadow'",
            (name, candidate),
        ).fetchone():
            continue
        live = stats["live"][:32]
        row = db.execute(
            """SELECT stats FROM shadow_stats
               WHERE model = ? AND candidate = ? AND live = ? AND device_id = ?""",
            (name, candidate, live, device_id),
        ).fetchone()
        merged: dict[str, Any] = {key: json.loads(row["stats"])} if row else {}
        rollup.merge_shadow(merged, {key: {**stats, "live": live}})
        db.execute(
            """INSERT INTO shadow_stats (model, candidate, live, device_id, stats, updated_at)
               VALUES (?, ?, ?, ?, ?, ?)
               ON CONFLICT (model, candidate, live, device_id)
               DO UPDATE SET stats = excluded.stats, updated_at = excluded.updated_at""",
            (name, candidate, live, device_id, json.dumps(merged[key], sort_keys=True), now),
        )


def summary(db: Sql, rollout_id: int) -> dict[str, Any] | None:
    """What a shadow roll-out's devices reported, side by side, and its criteria and
    progress; None for a roll-out that is not a shadow one."""
    row = db.execute(
        "SELECT name, version, mode, criteria FROM rollouts WHERE id = ?", (rollout_id,)
    ).fetchone()
    if row is None or row["mode"] != "shadow":
        return None
    criteria = {**DEFAULT_CRITERIA, **json.loads(row["criteria"] or "{}")}
    total = rollup.empty_shadow("")
    devices: dict[str, int] = {}
    for r in db.execute(
        """SELECT s.device_id, s.stats FROM shadow_stats s
           JOIN rollout_devices d ON d.device_id = s.device_id AND d.rollout_id = ?
           WHERE s.model = ? AND s.candidate = ?""",
        (rollout_id, row["name"], row["version"]),
    ):
        stats = json.loads(r["stats"])
        merged = {"k": {**total, "live": stats.get("live", "")}}
        rollup.merge_shadow(merged, {"k": stats})
        total = merged["k"]
        devices[r["device_id"]] = devices.get(r["device_id"], 0) + rollup.count(stats.get("count"))
    n = total["count"]
    basis = "cpu" if total["cpu_count"] else "wall"
    return {
        "samples": n,
        "min_samples": int(criteria["min_samples"]),
        "progress": round(min(1.0, n / criteria["min_samples"]), 4)
        if criteria["min_samples"]
        else 1.0,
        "agreement": round(total["agree"] / n, 4) if n else None,
        "latency_ratio": _ratio(total, basis),
        "latency_basis": basis,
        "wall_latency_ratio": _ratio(total, "wall"),
        "confusion": total["pairs"],
        "live": _side(total, "live", basis),
        "candidate": _side(total, "candidate", basis),
        "criteria": criteria,
        "devices": devices,
    }


def judge(db: Sql, now: float) -> list[Judged]:
    """Decide every shadow roll-out that has its samples (see the module's docstring)."""
    judged = []
    with db.write():
        ids = [r["id"] for r in db.execute("SELECT id FROM rollouts WHERE state = 'shadow'")]
        for rollout_id in ids:
            found = summary(db, rollout_id)
            if found is None or found["samples"] < found["min_samples"]:
                continue
            judged.append(_decide(db, rollout_id, found, now))
    return judged


def desired_shadows_of(db: Sql, device_ids: list[str]) -> dict[str, list[tuple[bytes, bytes]]]:
    """The candidates each device should run in shadow (signed releases), for the
    devices that have one."""
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    for device_id in device_ids:
        rows = db.execute(
            """SELECT m.document, m.signature FROM rollouts r
               JOIN rollout_devices d ON d.rollout_id = r.id
               JOIN models m ON m.name = r.name AND m.version = r.version
               WHERE d.device_id = ? AND r.state = 'shadow'
               ORDER BY r.id""",
            (device_id,),
        ).fetchall()
        if rows:
            out[device_id] = [(bytes(r["document"]), bytes(r["signature"])) for r in rows]
    return out


def _decide(db: Sql, rollout_id: int, found: dict[str, Any], now: float) -> Judged:
    c = found["criteria"]
    agreement, ratio, n = found["agreement"], found["latency_ratio"], found["samples"]
    basis = "CPU time" if found["latency_basis"] == "cpu" else "wall time"
    live_threads, candidate_threads = found["live"]["threads"], found["candidate"]["threads"]
    if found["latency_basis"] == "cpu" and live_threads.keys() != candidate_threads.keys():
        # N threads spend more CPU than one on the same work (runner.py): say so.
        basis += (
            f", live on {'/'.join(sorted(live_threads))} threads, "
            f"candidate on {'/'.join(sorted(candidate_threads))}"
        )
    failures = []
    if agreement < c["agreement_min"]:
        failures.append(f"agreement {agreement:.3f} < {c['agreement_min']:g}")
    if ratio is not None and ratio > c["latency_ratio_max"]:
        failures.append(f"latency ratio {ratio:.2f} ({basis}) > {c['latency_ratio_max']:g}")
    figures = f"over {n} samples: agreement {agreement:.3f}" + (
        f", latency ratio {ratio:.2f} ({basis})" if ratio is not None else ""
    )
    devices = [
        r["device_id"]
        for r in db.execute(
            "SELECT device_id FROM rollout_devices WHERE rollout_id = ? ORDER BY device_id",
            (rollout_id,),
        )
    ]
    if failures:
        reason = f"stopped in shadow: {'; '.join(failures)} ({figures})"
        db.execute(
            "UPDATE rollouts SET state = 'stopped', reason = ?, updated_at = ? WHERE id = ?",
            (reason, now, rollout_id),
        )
        db.execute(
            """UPDATE rollout_devices SET state = 'superseded', detail = 'stopped in shadow',
                   updated_at = ? WHERE rollout_id = ? AND state != 'withdrawn'""",
            (now, rollout_id),
        )
        announce(db, rollout_id, "stopped", reason, now)
        return Judged(rollout_id, "stopped", reason, [], devices)
    reason = f"promoted from shadow {figures}"
    row = db.execute("SELECT name FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    # As a roll-out started now would: older ones of the model no longer release these.
    older = take_over(db, rollout_id, row["name"], devices, now)
    released = [
        r["device_id"]
        for r in db.execute(
            """SELECT device_id FROM rollout_devices
               WHERE rollout_id = ? AND stage = 'canary' AND state != 'withdrawn'""",
            (rollout_id,),
        )
    ]
    # A device revoked while it ran the candidate stays withdrawn: released again, it
    # would hold the roll-out up (or, a canary, never report).
    db.execute(
        """UPDATE rollout_devices SET
               state = CASE stage WHEN 'canary' THEN 'released' ELSE 'waiting' END,
               released_at = CASE stage WHEN 'canary' THEN ? ELSE NULL END,
               detail = '', updated_at = ?
           WHERE rollout_id = ? AND state != 'withdrawn'""",
        (now, now, rollout_id),
    )
    db.execute(
        "UPDATE rollouts SET state = 'canary', reason = ?, updated_at = ? WHERE id = ?",
        (reason, now, rollout_id),
    )
    announce(db, rollout_id, "promoted", reason, now)
    released += advance(db, rollout_id, now).released  # every canary revoked: a new one
    for old in older:  # one may have ended with these devices gone from it
        advance(db, old, now)
    return Judged(rollout_id, "canary", reason, released, devices)


def _ratio(total: dict[str, Any], basis: str) -> float | None:
    """The candidate's mean latency over the live version's, on the same inputs: CPU time
    ("cpu", over the comparisons that carry it) or wall time ("wall")."""
    kind = "cpu" if basis == "cpu" else "latency"
    live = total[f"live_{kind}_sum_ms"]
    return round(total[f"candidate_{kind}_sum_ms"] / live, 4) if live > 0 else None


def _side(total: dict[str, Any], side: str, basis: str) -> dict[str, Any]:
    """One side's figures: `latency_*` on the basis the ratio uses, `wall_*` always."""
    n = total["count"]
    bins = total[f"{side}_confidence"]
    wall = _figures(
        total[f"{side}_latency_ms"], total[f"{side}_latency_sum_ms"], n, rollup.LATENCY_BUCKETS_MS
    )
    if basis == "cpu":
        latency = _figures(
            total[f"{side}_cpu_ms"],
            total[f"{side}_cpu_sum_ms"],
            total["cpu_count"],
            rollup.CPU_BUCKETS_MS,
        )
    else:
        latency = wall
    return {
        **{f"latency_{k}": v for k, v in latency.items()},
        **{f"wall_{k}": v for k, v in wall.items()},
        "threads": total[f"{side}_threads"],
        # Bins of 0.1: their midpoints.
        "confidence_mean": round(
            sum((i + 0.5) / rollup.CONFIDENCE_BINS * k for i, k in enumerate(bins)) / n, 4
        )
        if n
        else None,
    }


def _figures(
    buckets: dict[str, int], sum_ms: float, n: int, bounds: tuple[float, ...]
) -> dict[str, float | None]:
    return {
        "mean_ms": round(sum_ms / n, 4) if n else None,
        "p50_ms": _quantile(buckets, bounds, 0.5),
        "p99_ms": _quantile(buckets, bounds, 0.99),
    }


def _quantile(buckets: dict[str, int], bounds: tuple[float, ...], q: float) -> float | None:
    """The `q` quantile of a histogram with upper bounds `bounds`, interpolated linearly
    within its bucket (as Prometheus' histogram_quantile does): off by at most the
    bucket's width, where the bound alone would read every answer under 1 ms as "1 ms".
    None past the last finite bound (nothing tells how far past)."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = q * total
    seen, lower = 0, 0.0
    for le in bounds:
        here = buckets.get(rollup.bucket_key(le), 0)
        if here and seen + here >= rank:
            if math.isinf(le):
                return None
            return round(lower + (le - lower) * (rank - seen) / here, 4)
        seen += here
        lower = le
    return None
