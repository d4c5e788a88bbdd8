"""The models' series in the hub's metrics: inferences, latency and confidence histograms,
and errors by reason, summed from the devices' metric roll-ups as the hub first stores
them (see hub/monitoring/metrics.py); and the cap that keeps the model label's values
bounded (the `MAX_MODELS` most used model names, the rest folded into "other").
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
# How many times the least used shown model's inferences a model must have run to take
# its place: two models neck and neck do not swap series at every roll-up.
OVERTAKE_FACTOR = 1.5


class InferenceTotals:
    """Inferences per model name and errors by reason, summed over stored roll-ups.

    The exported series are counters: each may only grow while the hub runs. So a roll-up
    is added to a series as it comes, to its model's own if that model is shown, else to
    "other", and nothing ever moves between series: a model that climbs into the
    `MAX_MODELS` most used gets a series of its own from then on (its earlier counts stay
    in "other"), and one it overtakes stops being exported, its later counts going to
    "other". Ranked once for good, the first names seen (20 made-up ones a device sent
    after a hub start) kept the fleet's real models in "other" until a restart.
    """

    def __init__(self) -> None:
        self.models: dict[str, ModelTotals] = {}  # per name since the hub started: ranks
        self.errors: collections.Counter[str] = collections.Counter(
            dict.fromkeys((*rollup.ERROR_REASONS, rollup.OTHER), 0)
        )
        self._series: dict[str, ModelTotals] = {}  # by label value: what is exported
        self._shown: set[str] = set()  # names whose counts go to a series of their own

    def add(self, folded: Folded) -> None:
        for name, totals in folded.models.items():
            if name not in self.models and len(self.models) >= MAX_TRACKED_MODELS:
                name = rollup.OTHER
            self.models.setdefault(name, ModelTotals()).add(totals)
            if name != rollup.OTHER and name not in self._shown:
                self._rank(name)
            label = name if name in self._shown else rollup.OTHER
            self._series.setdefault(label, ModelTotals()).add(totals)
        for reason, n in folded.errors.items():
            self.errors[reason if reason in self.errors else rollup.OTHER] += n

    def _rank(self, name: str) -> None:
        """Show `name` on its own if it is among the `MAX_MODELS` most used, in place of
        the least used shown one if it ran `OVERTAKE_FACTOR` times as many inferences."""
        if len(self._shown) >= MAX_MODELS:
            least = min(self._shown, key=lambda n: (self.models[n].count, n))
            if self.models[name].count <= OVERTAKE_FACTOR * self.models[least].count:
                return
            self._shown.discard(least)
        self._shown.add(name)

    def folded(self) -> dict[str, ModelTotals]:
        """Up to `MAX_MODELS` models on their own and "other": the series to export.

        A model shown again after it was overtaken resumes its series where it stopped:
        a counter never falls."""
        labels = [*self._shown, rollup.OTHER]
        return {label: self._series[label] for label in labels if label in self._series}


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
