"""Reading a device's roll-up record (outpost/rollup.py) as the hub folds it
(modelfold.py): what of it the statistics take, every field checked.

A roll-up comes from a device, and any program on the device may post a record shaped
like one, so each field is checked and a malformed one is skipped, not the record
(`read_loosely`). Checking field by field in Python was most of what reading cost, and
nearly every roll-up is exactly as an agent writes it. So `read` first decodes the record
against its declared shape (`_Rollup`), which msgspec checks in C, and reads it loosely
only when that fails. The shape is at least as strict as the loose reader: whatever
passes it, the loose reader keeps whole, so both give the same answer
(tests/fuzz/test_rollup_reading.py holds them to it).
"""

from __future__ import annotations

import math
import sys
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from hub.store.modelstats import BINS, MAX_MODELS, MAX_NAME, STREAMS
from hub.store.sql import storable_text
from outpost import rollup

Stats = dict[str, Any]  # one model version's checked counts, in the roll-up's shape

_KIND = rollup.KIND.encode()
_DEPTHS = ("queued", "running")
_BUCKETS = frozenset(rollup.BUCKET_KEYS)
_REASONS = frozenset(rollup.ERROR_REASONS)


class Checked(NamedTuple):
    """What folding takes from one roll-up, checked."""

    models: dict[str, Stats]  # "<name>@<version>": counts, at most MAX_MODELS
    errors: dict[str, int]  # known reason (or "other"): count
    fills: dict[str, float]  # stream: store fill, at most 1
    depths: dict[str, int]  # "queued", "running": tasks
    shadow: Any  # the shadow section as sent (shadows.fold checks it), or None


def read(body: bytes) -> Checked | None:
    """A stored metrics record's roll-up, checked; None if the record is not a roll-up."""
    if _KIND not in body:  # other metrics: skip the decode
        return None
    try:
        view = _DECODER.decode(body)
    except msgspec.ValidationError:  # off the agents' shape somewhere: field by field
        return read_loosely(body)
    except (ValueError, RecursionError):  # not msgpack at all
        return None
    if view.kind != rollup.KIND:
        return None
    kept: dict[str, Stats] = {}
    for key, stats in view.models.items():
        if _names_fit(key):  # the shape bounds the counts, maps, bins and models
            kept[key] = {
                "count": stats.count,
                "latency_ms": stats.latency_ms,
                "latency_sum_ms": _latency_sum(stats.latency_sum_ms, stats.count),
                "confidence": stats.confidence,
                "confidence_sum": _confidence_sum(stats.confidence_sum, stats.count),
                "labels": stats.labels,
            }
    # Unknown reasons fold into "other", as the loose reader folds them.
    errors = view.errors if view.errors.keys() <= _REASONS else _errors(view.errors)
    fills = {s: min(1.0, view.store[s].fill) for s in STREAMS if s in view.store}
    tasks = view.tasks
    depths = {k: rollup.count(tasks.get(k)) for k in _DEPTHS} if tasks else {}
    return Checked(kept, errors, fills, depths, view.shadow)


def read_loosely(body: bytes) -> Checked | None:
    """`read`, checking each field in Python: a malformed field is skipped, the rest kept."""
    try:
        data = msgspec.msgpack.decode(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("kind") != rollup.KIND:
        return None
    fills = {}
    store = data.get("store")
    if isinstance(store, dict):
        for stream in STREAMS:
            entry = store.get(stream)
            if isinstance(entry, dict):
                fill = rollup.number(entry.get("fill"))
                fills[stream] = min(1.0, fill) if math.isfinite(fill) else 0.0
    tasks = data.get("tasks") if isinstance(data.get("tasks"), dict) else {}
    depths = {k: rollup.count(tasks.get(k)) for k in _DEPTHS} if tasks else {}
    return Checked(
        _models(data.get("models")), _errors(data.get("errors")), fills, depths, data.get("shadow")
    )


def capped_labels(labels: dict[str, int]) -> dict[str, int]:
    """`labels` in at most `rollup.MAX_LABELS` keys: the most counted stay, the rest's
    counts go to "other", as an agent folds them (edge/rollup.py). Dropped, they were
    gone: the counts no longer summed to the inferences, and drift's label PSI compared
    distributions that had lost different shares of their mass."""
    if len(labels) <= rollup.MAX_LABELS:
        return labels
    ranked = sorted(
        ((label, n) for label, n in labels.items() if label != rollup.OTHER),
        key=lambda item: -item[1],
    )
    kept = dict(ranked[: rollup.MAX_LABELS - 1])
    dropped = sum(n for _, n in ranked[rollup.MAX_LABELS - 1 :])
    kept[rollup.OTHER] = labels.get(rollup.OTHER, 0) + dropped
    return kept


def _names_fit(key: str) -> bool:
    if len(key) > 2 * MAX_NAME:
        return False
    name, version = rollup.split_model_key(key)
    return bool(name) and len(name) <= MAX_NAME and len(version) <= MAX_NAME and storable_text(key)


def _models(value: Any) -> dict[str, Stats]:
    """The well-formed model entries of a roll-up, at most `MAX_MODELS`."""
    if not isinstance(value, dict):
        return {}
    kept: dict[str, Stats] = {}
    for key, stats in value.items():
        if len(kept) >= MAX_MODELS:
            break
        if not isinstance(key, str) or not isinstance(stats, dict) or not _names_fit(key):
            continue
        count = rollup.count(stats.get("count"))
        if count == 0:
            continue
        labels: dict[str, int] = {}
        for label, n in rollup.counts_of(stats.get("labels")):
            cut = label[:MAX_NAME]  # two long labels may cut alike: their counts add
            labels[cut] = labels.get(cut, 0) + n
        latency = [(le, n) for le, n in rollup.counts_of(stats.get("latency_ms"))]
        given = stats.get("confidence")
        bins = [rollup.count(n) for n in given[:BINS]] if isinstance(given, list) else []
        kept[key] = {
            "count": stats["count"],
            "latency_ms": {le: n for le, n in latency if le in _BUCKETS},
            "latency_sum_ms": _latency_sum(rollup.number(stats.get("latency_sum_ms")), count),
            "confidence": bins + [0] * (BINS - len(bins)),
            "confidence_sum": _confidence_sum(rollup.number(stats.get("confidence_sum")), count),
            "labels": capped_labels(labels),
        }
    return kept


# The slowest inference a roll-up may report on average: the last latency bucket's edge
# is far below it. One device's sums feed its model's fleet-wide series in /metrics, which
# a sum of 1.7e308 ms made +Inf for good, and a negative one ran backwards.
MAX_MEAN_LATENCY_MS = 3_600_000.0


def _latency_sum(value: float, count: int) -> float:
    """A reported latency sum, within 0 and `MAX_MEAN_LATENCY_MS` per inference."""
    return min(max(value, 0.0), count * MAX_MEAN_LATENCY_MS)


def _confidence_sum(value: float, count: int) -> float:
    """A reported confidence sum, within 0 and 1 per inference."""
    return min(max(value, 0.0), float(count))


def _errors(value: Any) -> dict[str, int]:
    errors: dict[str, int] = {}
    for reason, n in rollup.counts_of(value):
        known = reason if reason in _REASONS else rollup.OTHER
        errors[known] = errors.get(known, 0) + n
    return errors


# The shape agents write, bounded as the loose reader bounds what it keeps: counts are
# ints up to MAX_COUNT and numbers finite (the bounds refuse NaN and the infinities), as
# `rollup.count` and `rollup.number` keep them; the counts in maps are positive (the loose
# reader drops a zero one, agents never write one), the latency keys known buckets, the
# bins exactly BINS, and names and maps no longer than the loose reader would cut them.
# Every field is declared and no other allowed: msgspec skips an unknown field's bytes
# unread, where the loose reader refuses a record whose ignored parts are not msgpack. A
# field agents start to write (edge/rollup.py) must be declared here too, or their
# roll-ups take the loose reader: the same answer, at twice the cost.
_Count = Annotated[int, msgspec.Meta(ge=0, le=rollup.MAX_COUNT)]
_Positive = Annotated[int, msgspec.Meta(ge=1, le=rollup.MAX_COUNT)]
_Number = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
_Bucket = Literal[rollup.BUCKET_KEYS]  # type: ignore[valid-type]
_Label = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]


class _ModelCounts(msgspec.Struct, forbid_unknown_fields=True):
    count: _Positive
    latency_ms: dict[_Bucket, _Positive] = {}
    latency_sum_ms: _Number = 0.0
    confidence: Annotated[list[_Count], msgspec.Meta(min_length=BINS, max_length=BINS)] = (
        msgspec.field(default_factory=lambda: [0] * BINS)
    )
    confidence_sum: _Number = 0.0
    labels: Annotated[dict[_Label, _Positive], msgspec.Meta(max_length=rollup.MAX_LABELS)] = {}


class _StoreFill(msgspec.Struct, forbid_unknown_fields=True):
    fill: _Number = 0.0
    records: Any = None
    bytes: Any = None


class _Rollup(msgspec.Struct, forbid_unknown_fields=True):
    kind: str = ""
    period_s: Any = None
    load: Any = None
    models: Annotated[dict[str, _ModelCounts], msgspec.Meta(max_length=MAX_MODELS)] = {}
    errors: dict[str, _Positive] = {}
    store: dict[str, _StoreFill] = {}
    tasks: dict[str, Any] = {}
    shadow: Any = None


_DECODER = msgspec.msgpack.Decoder(_Rollup)
