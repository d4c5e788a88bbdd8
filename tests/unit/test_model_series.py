"""outpost_hub_inference_latency_seconds{model="other"} is a histogram: each bucket and
its _sum are counters and may never go down while the hub runs. The top MAX_MODELS were
ranked again at each scrape: a model climbing out of "other" took its counts with it,
and "other"'s buckets fell (a reset, to Prometheus). A model once shown stays shown."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hub.monitoring.modelmetrics import MAX_MODELS, InferenceTotals, ModelCollector
from hub.store.modelstats import Folded, ModelTotals


def _totals(count: int, bucket: str) -> ModelTotals:
    return ModelTotals(count=count, latency_ms={bucket: count}, latency_sum_ms=0.0)


def _scrape(totals: InferenceTotals) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(ModelCollector(totals))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.labels.get("model") == "other":
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_other_models_histogram_never_goes_backwards() -> None:
    totals = InferenceTotals()
    first = Folded()
    # MAX_MODELS models of 100 slow inferences each, and one more of 99 fast ones.
    for i in range(MAX_MODELS):
        first.models[f"big-{i:02d}"] = _totals(100, "1000")
    first.models["small"] = _totals(99, "0.1")
    totals.add(first)
    before = _scrape(totals)
    # "small" answers 2 more: it passes one of the others, which falls into "other".
    more = Folded()
    more.models["small"] = _totals(2, "0.1")
    totals.add(more)
    after = _scrape(totals)
    went_down = {k: (before[k], after.get(k, 0.0)) for k in before if after.get(k, 0.0) < before[k]}
    assert not went_down, went_down
    assert before  # "small" was in "other", and stays there
