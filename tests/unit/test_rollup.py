"""The agent's roll-up tally and the merging of roll-ups (the store's, the hub's)."""

from __future__ import annotations

from edge.rollup import Tally
from outpost import rollup


def test_bucket_and_bin_edges() -> None:
    assert rollup.latency_bucket(0.05) == "0.1"
    assert rollup.latency_bucket(0.1) == "0.1"  # le: at most
    assert rollup.latency_bucket(0.11) == "0.25"
    assert rollup.latency_bucket(10_000.0) == "+Inf"
    assert rollup.confidence_bin(0.0) == 0
    assert rollup.confidence_bin(0.95) == 9
    assert rollup.confidence_bin(1.0) == 9
    assert rollup.confidence_bin(float("nan")) == 0


def test_a_tally_counts_since_the_last_take() -> None:
    tally = Tally()
    tally.inference("m", "1.0.0", "ok", 0.93, 0.4)
    tally.inference("m", "1.0.0", "crack", 0.55, 3.0)
    tally.error("busy")
    tally.error("something new")
    models, errors = tally.take()
    assert models == {
        "m@1.0.0": {
            "count": 2,
            "latency_ms": {"0.5": 1, "5": 1},
            "latency_sum_ms": 3.4,
            "confidence": [0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
            "confidence_sum": 1.48,
            "labels": {"ok": 1, "crack": 1},
        }
    }
    assert errors == {"busy": 1, "other": 1}
    assert tally.take() == ({}, {})


def test_merging_roll_ups_adds_counts_and_keeps_the_newest_state() -> None:
    def one(n: int, queued: int) -> dict[str, object]:
        tally = Tally()
        for _ in range(n):
            tally.inference("m", "1", "ok", 0.9, 1.0)
        tally.error("bad_input")
        models, errors = tally.take()
        return {
            "kind": "rollup",
            "period_s": 60.0,
            "load": {"cpu_percent": float(queued)},
            "store": {"metrics": {"records": queued, "bytes": 1, "fill": 0.1}},
            "tasks": {"done": 1, "failed": 0, "queued": queued, "running": 0},
            "errors": errors,
            "models": models,
        }

    merged = rollup.merge([one(2, 1), one(3, 7)])
    assert merged["period_s"] == 120.0
    assert merged["models"]["m@1"]["count"] == 5
    assert merged["models"]["m@1"]["confidence"][9] == 5
    assert merged["models"]["m@1"]["latency_ms"] == {"1": 5}
    assert merged["errors"] == {"bad_input": 2}
    assert merged["tasks"] == {"done": 2, "failed": 0, "queued": 7, "running": 0}
    assert merged["load"] == {"cpu_percent": 7.0}


def test_counts_a_device_cannot_be_believed_are_ignored() -> None:
    into: dict[str, object] = {}
    rollup.merge_models(
        into,
        {"m@1": {"count": 2**62, "confidence": ["x", -3, 4], "labels": {"ok": True, "a": 2}}},
    )
    assert into["m@1"] == {
        "count": 0,
        "latency_ms": {},
        "latency_sum_ms": 0.0,
        "confidence": [0, 0, 4, 0, 0, 0, 0, 0, 0, 0],
        "confidence_sum": 0.0,
        "labels": {"a": 2},
    }


def test_a_model_with_more_labels_than_the_hub_keeps_counts_the_rest_as_other() -> None:
    tally = Tally()
    for n in range(rollup.MAX_LABELS + 10):
        tally.inference("m", "1", f"label-{n}", 0.9, 1.0)
    labels = tally.take()[0]["m@1"]["labels"]
    assert len(labels) == rollup.MAX_LABELS  # what the hub keeps of one roll-up
    assert labels[rollup.OTHER] == 11
    assert sum(labels.values()) == rollup.MAX_LABELS + 10
