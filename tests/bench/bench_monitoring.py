"""Monitoring: folding device roll-ups into the hub's statistics as they are stored,
beside storing the same records without folding; drift evaluations (a fleet read from the
store, and a larger one judged alone); and JSON log lines (redacted, masked) beside the
standard library's plain text lines."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import statistics
import time
from pathlib import Path

import msgpack
import numpy as np

from edge.masking import Masker
from hub.models import drift
from hub.store import Device, HubStore, Upload
from hub.store.modelstats import Distribution
from outpost import logs
from tests.bench.common import Result, per_second

DEVICES = 200
# Roll-ups per device, one upload each. Folding adds about the same time to every roll-up,
# while a plain store slows as the records table outgrows SQLite's page cache: at 10 a
# device (2,000 records) the table fits it and the ratio reads the cache, not the
# folding (2026-12-06: plain 60k rec/s at 10, 38k at 30; folding's extra the same).
ROLLUPS = 30
PAIRS = 3  # folded and plain stores, alternating; the median of each side is reported
LOG_LINES = 20_000
# Devices on one model version for the judging-only drift figure: a fleet where judging
# each device against all the others shows how the cost grows (it was quadratic: 52 s at
# 2,000 before the reference came from sorted columns).
DRIFT_FLEET = 2000


def _rollup(rng: random.Random, drifting: bool) -> dict[str, object]:
    # One device sees mostly "imbalance": the drift evaluation must single it out.
    faults = rng.randint(150, 250) if drifting else rng.randint(5, 20)
    labels = {"normal": rng.randint(200, 300), "imbalance": faults}
    return {
        "kind": "rollup",
        "period_s": 60.0,
        "load": {
            "cpu_percent": 12.0,
            "memory_percent": 30.0,
            "disk_percent": 40.0,
            "rss_bytes": 70 << 20,
            "temperature_c": 48.0,
        },
        "store": {
            s: {"records": 10, "bytes": 4000, "fill": 0.01}
            for s in ("results", "events", "metrics")
        },
        "tasks": {"done": 30, "failed": 0, "queued": 1, "running": 1},
        "errors": {"busy": 1},
        "models": {
            "vibration-anomaly@1.0.0": {
                "count": sum(labels.values()),
                "latency_ms": {"0.25": 150, "0.5": 100, "1": 20},
                "latency_sum_ms": 60.0,
                "confidence": [0, 0, 0, 0, 1, 2, 5, 20, 80, 150],
                "confidence_sum": 230.0,
                "labels": labels,
            }
        },
    }


async def _store(path: Path, stream: str) -> tuple[float, HubStore]:
    store = HubStore(path)
    rng = random.Random(7)
    for n in range(DEVICES):
        await store.add_device(
            Device(
                f"dev-{n:04d}",
                "generic",
                {},
                False,
                None,
                None,
                None,
                None,
                {},
                {},
                1.0,
                f"{n:04x}",
                1.0,
                2.0,
            )
        )
    uploads = [
        Upload(
            f"dev-{n:04d}",
            stream,
            seq,
            seq,
            [(seq, time.time(), msgpack.packb(_rollup(rng, n == 0)))],
        )
        for seq in range(1, ROLLUPS + 1)
        for n in range(DEVICES)
    ]
    started = time.perf_counter()
    for first in range(0, len(uploads), DEVICES):  # one batch per round of the fleet
        await store.apply_uploads(uploads[first : first + DEVICES], now=time.time())
    return per_second(len(uploads), time.perf_counter() - started), store


async def _ingest(root: Path) -> tuple[float, float, float, float]:
    """Roll-ups/s folded and plain (medians), the µs folding adds to a roll-up (the
    median of the pairs'), and the drift evaluation's ms."""
    pairs: list[tuple[float, float]] = []
    store: HubStore | None = None
    for n in range(PAIRS):
        if store is not None:  # the last pair's statistics feed the drift figure
            store.close()
        folded, store = await _store(root / f"folded-{n}.db", "metrics")
        plain, other = await _store(root / f"plain-{n}.db", "events")
        other.close()
        pairs.append((folded, plain))
    assert store is not None
    extra_us = statistics.median(1e6 / f - 1e6 / p for f, p in pairs)
    started = time.perf_counter()
    found = drift.evaluate(await store.model_distributions(since=time.time() - 86400))
    drift_ms = (time.perf_counter() - started) * 1000
    assert found, "no model statistics were folded"
    assert found[0].flagged == ["dev-0000"], found
    store.close()
    folded = statistics.median(f for f, _ in pairs)
    plain = statistics.median(p for _, p in pairs)
    return folded, plain, extra_us, drift_ms


def _log_rate(formatter: logging.Formatter, filters: list[logging.Filter]) -> float:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter)
    for f in filters:
        handler.addFilter(f)
    logger = logging.getLogger(f"bench.logs.{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = time.perf_counter()
    for n in range(LOG_LINES):
        logger.info("stored %d records for %s", n, "results", extra={"record": {"serial": "SN-1"}})
    return per_second(LOG_LINES, time.perf_counter() - started)


def _drift_of_a_large_fleet_ms() -> tuple[float, float]:
    """Judging `DRIFT_FLEET` devices of one version: CPU only, no store; and the same
    judgement bare (`_bare_psi` on numpy arrays built from the same counts)."""
    rng = random.Random(11)
    fleet = {
        f"dev-{n:05d}": Distribution(
            500,
            [rng.randint(0, 100) for _ in range(10)],
            {f"l{j}": rng.randint(0, 100) for j in range(8)},
        )
        for n in range(DRIFT_FLEET)
    }
    started = time.perf_counter()
    judged = drift.compare("vibration-anomaly", "1.0.0", fleet)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    ids = sorted(fleet)
    labels = sorted(set().union(*(d.labels for d in fleet.values())))
    confidence = _bare_psi(np.array([fleet[i].confidence for i in ids], dtype=float))
    by_labels = _bare_psi(
        np.array([[fleet[i].labels.get(b, 0) for b in labels] for i in ids], dtype=float)
    )
    bare = time.perf_counter() - started
    for device, c, lab in zip(judged.devices, confidence, by_labels, strict=True):
        assert (device.psi_confidence, device.psi_labels) == (round(c, 6), round(lab, 6))
    return ours * 1000, bare * 1000


def _bare_psi(counts: np.ndarray) -> np.ndarray:
    """Each row's PSI against the per-bin median share of all the other rows, normalised
    (drift.py's definition), in numpy: shares, columns sorted once, each row's
    leave-one-out median found by its rank in them. Written apart from the hub's
    `drift.against_the_others` (which does the same with its edge cases): a floor that
    called the product's code would measure it against itself."""
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    rows, bins = shares.shape
    ordered = np.sort(shares, axis=0)
    rank = np.stack(
        [np.searchsorted(ordered[:, j], shares[:, j], side="left") for j in range(bins)], axis=1
    )
    middle = (rows - 1) // 2

    def at(k: int) -> np.ndarray:  # the k-th of a column once the row's own share is gone
        return np.take_along_axis(ordered, np.where(k < rank, k, k + 1), axis=0)

    median = at(middle) if (rows - 1) % 2 == 1 else (at(middle - 1) + at(middle)) / 2
    reference = median / median.sum(axis=1, keepdims=True)
    p = np.maximum(shares, drift.EPSILON)
    q = np.maximum(reference, drift.EPSILON)
    psi: np.ndarray = ((p - q) * np.log(p / q)).sum(axis=1)
    return psi


def run(root: Path) -> list[Result]:
    root.mkdir(parents=True, exist_ok=True)
    folded, plain, extra_us, drift_ms = asyncio.run(_ingest(root))
    large_drift_ms, bare_drift_ms = _drift_of_a_large_fleet_ms()
    masker = Masker(root / "mask.key")
    masker.set_rules([], ["serial"])
    json_rate = _log_rate(logs.JsonFormatter(), [logs.Redact(), logs.MaskFields(masker.mask)])
    text_rate = _log_rate(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"), [])
    return [
        Result(
            "hub: roll-ups stored and folded (200 devices)",
            folded,
            plain,
            "rec/s",
            f"raw = the same records stored, not folded; {ROLLUPS} a device; "
            f"median of {PAIRS}, alternating",
        ),
        Result(
            "hub: time folding adds to a roll-up",
            extra_us,
            None,
            "us",
            f"median of the pairs' difference; a plain store {1e6 / plain:.1f} us a record",
        ),
        Result(
            f"drift: PSI of {DEVICES} devices against the fleet",
            drift_ms,
            None,
            "ms",
            "read the 24 h window and compare; one model version",
        ),
        Result(
            f"drift: PSI of {DRIFT_FLEET:,} devices against the fleet (judging only)",
            large_drift_ms,
            bare_drift_ms,
            "ms",
            "one model version, 10 confidence bins, 8 labels; no store; raw = the same "
            "judgement in numpy (the same numbers), its arrays built from the same counts",
        ),
        Result(
            "log lines, JSON, redacted and masked",
            json_rate,
            text_rate,
            "lines/s",
            "raw = logging's plain text formatter",
        ),
    ]
