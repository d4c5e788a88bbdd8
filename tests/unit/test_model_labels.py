"""The `model` label of the inference series: the most used model names get their own
series, whenever they become so, and no counter ever falls (hub/monitoring/modelmetrics.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hub.monitoring.modelmetrics import MAX_MODELS, InferenceTotals, ModelCollector
from hub.store.modelstats import Folded, ModelTotals

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _folded(counts: dict[str, int]) -> Folded:
    folded = Folded()
    for name, n in counts.items():
        folded.models[name] = ModelTotals(count=n, latency_ms={"10": n}, latency_sum_ms=n)
    return folded


def _scrape(totals: InferenceTotals) -> Samples:
    registry = CollectorRegistry()
    registry.register(ModelCollector(totals))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "model" in s.labels
    }


def _inferences(samples: Samples) -> dict[str, float]:
    return {
        dict(labels)["model"]: value
        for (name, labels), value in samples.items()
        if name == "outpost_hub_inferences_total"
    }


def _fell(before: Samples, after: Samples) -> dict[object, tuple[float, float]]:
    """The series of `before` that `after` still exports with a lower value."""
    return {k: (v, after[k]) for k, v in before.items() if k in after and after[k] < v}


def test_a_busy_model_gets_its_series_after_made_up_names_took_every_place() -> None:
    """One device reported 20 made-up names just after a hub start: the first 20 names
    ranked were shown for good, and the fleet's real model stayed in "other"."""
    totals = InferenceTotals()
    totals.add(_folded({f"junk-{i:02d}": 1 for i in range(MAX_MODELS)}))
    before = _scrape(totals)

    totals.add(_folded({"camera-defects": 1_000_000}))
    after = _scrape(totals)

    shown = _inferences(after)
    assert shown["camera-defects"] == 1_000_000
    assert len(shown) == MAX_MODELS  # a junk name gave way to it
    assert "other" not in shown  # nothing reached "other": no count moved into it
    assert not _fell(before, after)


def test_a_21st_model_overtaking_another_takes_its_place_without_any_counter_falling() -> None:
    totals = InferenceTotals()
    totals.add(_folded({f"model-{i:02d}": 100 for i in range(MAX_MODELS)}))
    totals.add(_folded({"newcomer": 100}))  # no more used than the others: in "other"
    before = _scrape(totals)
    assert "newcomer" not in _inferences(before)

    totals.add(_folded({"newcomer": 1000}))
    totals.add(_folded({"model-00": 5}))  # overtaken: later counts go to "other"
    after = _scrape(totals)

    shown = _inferences(after)
    assert shown["newcomer"] == 1000  # its own series from when it climbed in
    assert shown["other"] == 100 + 5  # its earlier counts stay; the overtaken one's later
    assert len(shown) == MAX_MODELS + 1
    assert not _fell(before, after)
    assert sum(shown.values()) + 100 == 21 * 100 + 1000 + 5  # model-00's first 100 left


def test_an_overtaken_model_shown_again_resumes_its_series() -> None:
    totals = InferenceTotals()
    totals.add(_folded({f"model-{i:02d}": 100 for i in range(MAX_MODELS)}))
    totals.add(_folded({"newcomer": 1000}))  # overtakes one model
    (gone,) = {f"model-{i:02d}" for i in range(MAX_MODELS)} - set(_inferences(_scrape(totals)))
    before = _scrape(totals)

    totals.add(_folded({gone: 10_000}))  # climbs back in
    after = _scrape(totals)

    assert _inferences(after)[gone] == 100 + 10_000
    assert not _fell(before, after)
