"""The metric roll-up record: what an agent writes to its metrics stream every
`metrics_interval`, and what the hub folds into its model statistics.

Both sides import this module, so the buckets, bins and reason codes are one contract:

    {"kind": "rollup", "period_s": 60.0,
     "load": {cpu_percent, memory_percent, disk_percent, rss_bytes, temperature_c},
     "store": {stream: {"records", "bytes", "fill"}},
     "tasks": {"done", "failed", "queued", "running"},
     "errors": {reason: count},
     "models": {"<name>@<version>": {"count", "latency_ms": {"<le>": count},
                "latency_sum_ms", "confidence": [10 counts], "confidence_sum",
                "labels": {label: count}}}}

Counts are since the previous roll-up; `latency_ms` holds only non-empty buckets, each
counting the inferences above the bucket before it and at most `le` milliseconds.

A device running a shadow roll-out's candidate adds, per candidate:

     "shadow": {"<name>@<candidate version>": {"live": "<live version>", "count",
                "agree", "pairs": {"<live label>|<candidate label>": count},
                "live_latency_ms": {...}, "candidate_latency_ms": {...} (buckets as above),
                "live_latency_sum_ms", "candidate_latency_sum_ms",
                "live_confidence": [10], "candidate_confidence": [10],
                "cpu_count", "live_cpu_sum_ms", "candidate_cpu_sum_ms",
                "live_cpu_ms": {...}, "candidate_cpu_ms": {...} (`CPU_BUCKETS_MS`),
                "live_threads": {"<num_threads>": count}, "candidate_threads": {...}}}

The `*_latency_*` figures are wall time, which a candidate (at the lowest CPU priority)
inflates on a busy machine by waiting for a CPU; the `*_cpu_*` ones are the CPU time
each side's threads spent on the same inputs, counted over the `cpu_count` comparisons
where both sides could measure it (older agents send none: the hub then falls back
to wall time). Their buckets are finer (about 26 % wide, from 1 µs) than the
latency ones, so a quantile read from them is within a bucket's width of the truth even
for a model that answers in microseconds. `*_threads` count the comparisons by each
side's interpreter threads: CPU times compare like with like only at equal counts.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

KIND = "rollup"

# Upper bounds of the latency buckets, milliseconds: from a tiny int8 model on a fast
# core (tens of microseconds) to a large one on a slow board (seconds).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    math.inf,
)
CONFIDENCE_BINS = 10  # [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]

# Why a request or a task did not give an answer. A fixed set: the hub exports one series
# per reason, and folds anything else a device says into "other".
ERROR_REASONS: tuple[str, ...] = (
    "bad_input",  # the input's shape, dtype or values were wrong
    "bad_request",  # the local API could not read the body
    "busy",  # a model's queue was full
    "model_fault",  # the interpreter failed
    "model_unavailable",  # the model is installed but not loaded
    "unknown_model",
    "not_allowed",  # the policy does not allow the model
    "stream_full",  # a result could not be stored
    "task_rejected",  # an assignment refused (full, expired, unknown model ...)
    "task_failed",  # a task ran and failed (also counted under its cause)
    "task_dropped",  # its deadline or lease passed before it ran
)
OTHER = "other"
MAX_LABELS = 64  # labels kept per model in one roll-up; the rest count as "other"
MAX_COUNT = 2**40  # a larger count in a record is not believed (and would overflow SQL)


def bucket_key(le: float) -> str:
    """A latency bucket's key in the record: "0.25", "10", "+Inf"."""
    return "+Inf" if math.isinf(le) else f"{le:g}"


BUCKET_KEYS: tuple[str, ...] = tuple(bucket_key(le) for le in LATENCY_BUCKETS_MS)


# Finer bounds for the CPU time histograms of shadow comparisons: 10 per decade (each
# about 26 % above the one before, rounded to 3 digits) from 1 µs to 10 s, then +Inf. A
# record holds only the non-empty ones: one model's answers fill a handful.
CPU_BUCKETS_MS: tuple[float, ...] = (
    *(float(f"{0.001 * 10 ** (k / 10):.3g}") for k in range(71)),
    math.inf,
)
CPU_BUCKET_KEYS: tuple[str, ...] = tuple(bucket_key(le) for le in CPU_BUCKETS_MS)


def cpu_bucket(cpu_ms: float) -> str:
    """The key of the CPU time bucket `cpu_ms` falls in (le: at most)."""
    if math.isnan(cpu_ms):
        return CPU_BUCKET_KEYS[-1]
    return CPU_BUCKET_KEYS[bisect.bisect_left(CPU_BUCKETS_MS, cpu_ms)]


def latency_bucket(latency_ms: float) -> str:
    """The key of the bucket `latency_ms` falls in."""
    for le, key in zip(LATENCY_BUCKETS_MS, BUCKET_KEYS, strict=True):
        if latency_ms <= le:
            return key
    return BUCKET_KEYS[-1]  # NaN


def confidence_bin(confidence: float) -> int:
    """The bin of a confidence in [0, 1] (1.0 itself goes to the last bin)."""
    if not confidence >= 0:  # NaN, negative
        return 0
    return min(int(confidence * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)


def model_key(name: str, version: str) -> str:
    return f"{name}@{version}"


def split_model_key(key: str) -> tuple[str, str]:
    name, _, version = key.rpartition("@")
    return (name, version) if name else (key, "")


def merge_models(into: dict[str, Any], more: dict[str, Any]) -> None:
    """Add the per-model counts of `more` into `into` (both in the record's shape)."""
    for key, stats in more.items():
        if not isinstance(stats, dict):
            continue
        mine = into.setdefault(
            key,
            {
                "count": 0,
                "latency_ms": {},
                "latency_sum_ms": 0.0,
                "confidence": [0] * CONFIDENCE_BINS,
                "confidence_sum": 0.0,
                "labels": {},
            },
        )
        mine["count"] += count(stats.get("count"))
        mine["latency_sum_ms"] += number(stats.get("latency_sum_ms"))
        mine["confidence_sum"] += number(stats.get("confidence_sum"))
        for le, n in counts_of(stats.get("latency_ms")):
            mine["latency_ms"][le] = mine["latency_ms"].get(le, 0) + n
        confidence = stats.get("confidence")
        if isinstance(confidence, list):
            for i, n in enumerate(confidence[:CONFIDENCE_BINS]):
                mine["confidence"][i] += count(n)
        for label, n in counts_of(stats.get("labels")):
            mine["labels"][label] = mine["labels"].get(label, 0) + n


SHADOW_COUNTS = ("count", "agree", "cpu_count")
SHADOW_SUMS = (
    "live_latency_sum_ms",
    "candidate_latency_sum_ms",
    "live_cpu_sum_ms",
    "candidate_cpu_sum_ms",
)
_THREAD_KEYS = frozenset(str(n) for n in range(1, 65))
# Each map and the keys it may hold (None: any, up to MAX_PAIRS): a device cannot grow
# a histogram with keys of its own.
SHADOW_MAPS: dict[str, frozenset[str] | None] = {
    "pairs": None,
    "live_latency_ms": frozenset(BUCKET_KEYS),
    "candidate_latency_ms": frozenset(BUCKET_KEYS),
    "live_cpu_ms": frozenset(CPU_BUCKET_KEYS),
    "candidate_cpu_ms": frozenset(CPU_BUCKET_KEYS),
    "live_threads": _THREAD_KEYS,
    "candidate_threads": _THREAD_KEYS,
}
SHADOW_BINS = ("live_confidence", "candidate_confidence")
MAX_PAIRS = 256  # label pairs kept per candidate; the rest count as "other|other"


def empty_shadow(live: str) -> dict[str, Any]:
    return {
        "live": live,
        **{k: 0 for k in SHADOW_COUNTS},
        **{k: 0.0 for k in SHADOW_SUMS},
        **{k: {} for k in SHADOW_MAPS},
        **{k: [0] * CONFIDENCE_BINS for k in SHADOW_BINS},
    }


def merge_shadow(into: dict[str, Any], more: Any) -> None:
    """Add the shadow counts of `more` into `into` (both in the record's shape); a
    candidate compared with another live version than before starts again."""
    for key, stats in mapping(more).items():
        if not isinstance(stats, dict) or not isinstance(stats.get("live"), str):
            continue
        mine = into.get(key)
        if mine is None or mine["live"] != stats["live"]:
            mine = into[key] = empty_shadow(stats["live"])
        else:  # stored before a field was added: it starts from nothing
            for k, empty in empty_shadow(mine["live"]).items():
                mine.setdefault(k, empty)
        for k in SHADOW_COUNTS:
            mine[k] += count(stats.get(k))
        for k in SHADOW_SUMS:
            mine[k] += number(stats.get(k))
        for k, allowed in SHADOW_MAPS.items():
            for label, n in counts_of(stats.get(k)):
                if allowed is not None and label not in allowed:
                    continue
                if k == "pairs" and label not in mine[k] and len(mine[k]) >= MAX_PAIRS:
                    label = f"{OTHER}|{OTHER}"
                mine[k][label] = mine[k].get(label, 0) + n
        for k in SHADOW_BINS:
            bins = stats.get(k)
            if isinstance(bins, list):
                for i, n in enumerate(bins[:CONFIDENCE_BINS]):
                    mine[k][i] += count(n)
    # `agree` and `cpu_count` can never exceed `count`, whatever a device claims.
    for mine in into.values():
        mine["agree"] = min(mine["agree"], mine["count"])
        mine["cpu_count"] = min(mine.get("cpu_count", 0), mine["count"])


def merge(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One roll-up covering several, oldest first: counts add up, the newest load, store
    and queue depths stand (the agent's store merges its oldest when the stream is full)."""
    last = records[-1]
    models: dict[str, Any] = {}
    shadow: dict[str, Any] = {}
    errors: dict[str, int] = {}
    done = failed = 0
    for record in records:
        merge_models(models, mapping(record.get("models")))
        merge_shadow(shadow, record.get("shadow"))
        for reason, n in counts_of(record.get("errors")):
            errors[reason] = errors.get(reason, 0) + n
        tasks = mapping(record.get("tasks"))
        done += count(tasks.get("done"))
        failed += count(tasks.get("failed"))
    tasks = dict(mapping(last.get("tasks")))
    tasks.update(done=done, failed=failed)
    merged = {
        "kind": KIND,
        "period_s": sum(number(r.get("period_s")) for r in records),
        "load": last.get("load"),
        "store": last.get("store"),
        "tasks": tasks,
        "errors": errors,
        "models": models,
    }
    if shadow:
        merged["shadow"] = shadow
    return merged


def mapping(value: Any) -> dict[str, Any]:
    """A map from a device's record, or an empty one: any program on the device may post
    a record shaped like a roll-up, and merging must not fail on it."""
    return value if isinstance(value, dict) else {}


def count(value: Any) -> int:
    """A count from a device's record: a positive int (at most `MAX_COUNT`), or 0."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT:
        return value
    return 0


def number(value: Any) -> float:
    """A finite number from a device's record, or 0.0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return 0.0


def counts_of(value: Any) -> list[tuple[str, int]]:
    """The (str key, positive int count) pairs of a map; anything else is skipped."""
    if not isinstance(value, dict):
        return []
    return [(k, n) for k, v in value.items() if isinstance(k, str) and (n := count(v))]
