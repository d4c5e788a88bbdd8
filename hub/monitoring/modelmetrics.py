"""The models' series in the hub's metrics: inferences, latency and confidence histograms,
and errors by reason, summed from the devices' metric roll-ups as the hub first stores
them (see hub/monitoring/metrics.py); and the cap that keeps the model label's values bounded (the
`MAX_MODELS` most common model names, the rest folded into "other").
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.store.modelstats import Folded, ModelTotals
from outpost import rollup

V = TypeVar("V")
MAX_MODELS = 20  # model label values exported; the rest of the models count as "other"
# Model names the counters remember: beyond this many, new names count as "other" at
# once, so devices reporting ever new names cannot grow the hub's memory.
MAX_TRACKED_MODELS = 500


class InferenceTotals:
    """Inferences per model name and errors by reason, summed over stored roll-ups."""

    def __init__(self) -> None:
        self.models: dict[str, ModelTotals] = {}
        self.errors: collections.Counter[str] = collections.Counter(
            dict.fromkeys((*rollup.ERROR_REASONS, rollup.OTHER), 0)
        )
        self._shown: dict[str, None] = {}  # names exported on their own, for good

    def add(self, folded: Folded) -> None:
        for name, totals in folded.models.items():
            if name not in self.models and len(self.models) >= MAX_TRACKED_MODELS:
                name = rollup.OTHER
            self.models.setdefault(name, ModelTotals()).add(totals)
        for reason, n in folded.errors.items():
            self.errors[reason if reason in self.errors else rollup.OTHER] += n

    def folded(self) -> dict[str, ModelTotals]:
        """Up to `MAX_MODELS` models on their own, the rest summed under "other".

        A model once shown on its own stays so: were the top models re-ranked at each
        scrape, one climbing out of "other" would take its buckets and sums with it, and
        those counters of "other" would fall (a reset to Prometheus, 99 to 0 in the
        review's probe). So "other" only ever gains members, and only ever grows."""
        for name in sorted(self.models, key=lambda n: (-self.models[n].count, n)):
            if len(self._shown) >= MAX_MODELS:
                break
            if name != rollup.OTHER:
                self._shown.setdefault(name)
        kept = {name: self.models[name] for name in self._shown}
        rest = [t for name, t in self.models.items() if name not in self._shown]
        if rest:
            kept[rollup.OTHER] = _sum_totals(rest)
        return kept


class ModelCollector(Collector):
    """Inference counts, latency and confidence histograms, errors, from roll-ups."""

    def __init__(self, totals: InferenceTotals) -> None:
        self.totals = totals

    def collect(self) -> Iterator[Metric]:
        models = self.totals.folded()
        count = CounterMetricFamily(
            "outpost_hub_inferences",
            "Inferences the devices ran, by model (from their metric roll-ups)",
            labels=["model"],
        )
        latency = HistogramMetricFamily(
            "outpost_hub_inference_latency_seconds",
            "Interpreter time per inference across the fleet, by model",
            labels=["model"],
        )
        confidence = HistogramMetricFamily(
            "outpost_hub_inference_confidence",
            "Top score per inference across the fleet, by model",
            labels=["model"],
        )
        for model, t in sorted(models.items()):
            count.add_metric([model], t.count)
            latency.add_metric([model], _latency_buckets(t), sum_value=t.latency_sum_ms / 1000)
            confidence.add_metric([model], _confidence_buckets(t), sum_value=t.confidence_sum)
        yield count
        yield latency
        yield confidence
        errors = CounterMetricFamily(
            "outpost_hub_device_errors",
            "Errors the devices met, by reason (from their metric roll-ups)",
            labels=["reason"],
        )
        for reason, n in sorted(self.totals.errors.items()):
            errors.add_metric([reason], n)
        yield errors


def _latency_buckets(t: ModelTotals) -> list[tuple[str, float]]:
    """Cumulative buckets in seconds from the roll-ups' per-bucket counts in ms."""
    out: list[tuple[str, float]] = []
    running = 0
    for le, key in zip(rollup.LATENCY_BUCKETS_MS, rollup.BUCKET_KEYS, strict=True):
        running += t.latency_ms.get(key, 0)
        out.append(("+Inf" if key == "+Inf" else f"{le / 1000:g}", running))
    out[-1] = ("+Inf", max(running, t.count))
    return out


def _confidence_buckets(t: ModelTotals) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for i, n in enumerate(t.confidence):
        running += n
        out.append((f"{(i + 1) / rollup.CONFIDENCE_BINS:.1f}", running))
    out.append(("+Inf", running))
    return out


def _sum_totals(parts: list[ModelTotals]) -> ModelTotals:
    total = ModelTotals()
    for part in parts:
        total.add(part)
    return total


def fold_models(
    values: dict[str, V], weight: Callable[[V], float], combine: Callable[[list[V]], V]
) -> dict[str, V]:
    """Keep the `MAX_MODELS` heaviest names; combine the rest (and "other") as "other"."""
    ranked = sorted(
        (name for name in values if name != rollup.OTHER),
        key=lambda name: (-weight(values[name]), name),
    )
    kept = {name: values[name] for name in ranked[:MAX_MODELS]}
    rest = [values[name] for name in ranked[MAX_MODELS:]]
    if rollup.OTHER in values:
        rest.append(values[rollup.OTHER])
    if rest:
        kept[rollup.OTHER] = combine(rest)
    return kept
