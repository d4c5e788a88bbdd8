"""What the agent counts between two metric roll-ups, and the roll-up record itself.

The inference path counts each answer (model version, label, confidence bin, latency
bucket) and each error by reason into a `Tally`: a few dict increments on the event
loop, nothing stored. Every `metrics_interval` the agent `take`s the tally (which resets
it) and writes one record (see `outpost.rollup`) to the metrics stream, so it reaches the
hub through store and forward, in order, however long the link is down.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from outpost import rollup, schema, wire


@dataclasses.dataclass
class _ModelTally:
    count: int = 0
    latency_sum_ms: float = 0.0
    confidence_sum: float = 0.0
    latency_ms: dict[str, int] = dataclasses.field(default_factory=dict)
    confidence: list[int] = dataclasses.field(default_factory=lambda: [0] * rollup.CONFIDENCE_BINS)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


class Tally:
    """Counts since the last roll-up: per model version, and errors by reason."""

    def __init__(self) -> None:
        self._models: dict[str, _ModelTally] = {}
        self._errors: dict[str, int] = {}
        self._shadow: dict[str, dict[str, Any]] = {}  # rollup.empty_shadow maps

    def inference(
        self, name: str, version: str, label: str, confidence: float, latency_ms: float
    ) -> None:
        key = rollup.model_key(name, version)
        tally = self._models.get(key)
        if tally is None:
            tally = self._models[key] = _ModelTally()
        tally.count += 1
        tally.latency_sum_ms += latency_ms
        bucket = rollup.latency_bucket(latency_ms)
        tally.latency_ms[bucket] = tally.latency_ms.get(bucket, 0) + 1
        tally.confidence[rollup.confidence_bin(confidence)] += 1
        tally.confidence_sum += confidence
        # At most MAX_LABELS keys in all, "other" among them: the hub keeps no more.
        if label not in tally.labels and len(tally.labels) >= rollup.MAX_LABELS - 1:
            label = rollup.OTHER
        tally.labels[label] = tally.labels.get(label, 0) + 1

    def shadow(
        self, name: str, live_version: str, candidate_version: str, live: Any, candidate: Any
    ) -> None:
        """One input both the live version and a shadow candidate answered (`Inference`s)."""
        key = rollup.model_key(name, candidate_version)
        s = self._shadow.get(key)
        if s is None or s["live"] != live_version:
            s = self._shadow[key] = rollup.empty_shadow(live_version)
        s["count"] += 1
        s["agree"] += live.label == candidate.label
        pair = f"{live.label}|{candidate.label}"
        if pair in s["pairs"] or len(s["pairs"]) < rollup.MAX_PAIRS:
            s["pairs"][pair] = s["pairs"].get(pair, 0) + 1
        # CPU time where both sides have it: a sum over the same inputs on both sides.
        cpu = live.cpu_ms is not None and candidate.cpu_ms is not None
        s["cpu_count"] += cpu
        for side, answer in (("live", live), ("candidate", candidate)):
            _add(s[f"{side}_latency_ms"], rollup.latency_bucket(answer.latency_ms))
            s[f"{side}_latency_sum_ms"] += answer.latency_ms
            s[f"{side}_confidence"][rollup.confidence_bin(answer.confidence)] += 1
            _add(s[f"{side}_threads"], str(answer.threads))
            if cpu:
                _add(s[f"{side}_cpu_ms"], rollup.cpu_bucket(answer.cpu_ms))
                s[f"{side}_cpu_sum_ms"] += answer.cpu_ms

    def take_shadow(self) -> dict[str, Any]:
        """The shadow comparisons counted since the last call; counting starts again."""
        shadow, self._shadow = self._shadow, {}
        for s in shadow.values():
            for k in rollup.SHADOW_SUMS:
                s[k] = round(s[k], 4)  # 0.1 µs: a tiny model's CPU time is a few µs
        return shadow

    def error(self, reason: str) -> None:
        if reason not in rollup.ERROR_REASONS:
            reason = rollup.OTHER
        self._errors[reason] = self._errors.get(reason, 0) + 1

    def take(self) -> tuple[dict[str, Any], dict[str, int]]:
        """The models and errors counted since the last call; counting starts again."""
        models = {
            key: {
                "count": t.count,
                "latency_ms": t.latency_ms,
                "latency_sum_ms": round(t.latency_sum_ms, 3),
                "confidence": t.confidence,
                "confidence_sum": round(t.confidence_sum, 4),
                "labels": t.labels,
            }
            for key, t in self._models.items()
        }
        errors = self._errors
        self._models, self._errors = {}, {}
        return models, errors


def _add(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def record(
    *,
    period_s: float,
    load: wire.Load,
    store: dict[str, Any],
    tasks: dict[str, int],
    models: dict[str, Any],
    errors: dict[str, int],
    shadow: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One roll-up record; `store` is `AgentStore.stats()`."""
    out = {
        "kind": rollup.KIND,
        "period_s": round(period_s, 3),
        "load": schema.dump(load),
        "store": {
            name: {"records": s["records"], "bytes": s["bytes"], "fill": round(s["fill"], 4)}
            for name, s in store["streams"].items()
        },
        "tasks": tasks,
        "errors": errors,
        "models": models,
    }
    if shadow:
        out["shadow"] = shadow
    return out
