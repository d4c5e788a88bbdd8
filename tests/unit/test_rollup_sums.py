"""A device's roll-up may say any finite latency and confidence sums. Summed across
roll-ups they reached +Inf or went negative, and the fleet-wide histogram sums in
/metrics followed: one device spoilt its model's series for every device. The hub keeps
each sum within 0 and a bound per inference (hub/store/rollupread.py), on both of its
readers (the typed one and the loose one a roll-up off the agents' shape takes)."""

from __future__ import annotations

import math

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hub.monitoring.modelmetrics import InferenceTotals, ModelCollector
from hub.store import rollupread
from hub.store.modelfold import Folder


def _rollup(version: str, latency_sum_ms: float, confidence_sum: float) -> bytes:
    return msgspec.msgpack.encode(
        {
            "kind": "rollup",
            "period_s": 60.0,
            "models": {
                f"cam@{version}": {
                    "count": 1,
                    "latency_ms": {"1": 1},
                    "latency_sum_ms": latency_sum_ms,
                    "confidence": [0] * 9 + [1],
                    "confidence_sum": confidence_sum,
                    "labels": {"ok": 1},
                }
            },
        }
    )


def _sums(rows: list[bytes]) -> dict[str, float]:
    folder = Folder(now=1_000_000.0)
    rows_of = [(i + 1, 1_000_000.0, body) for i, body in enumerate(rows)]
    folder.add(None, "dev-1", rows_of)  # type: ignore[arg-type]
    totals = InferenceTotals()
    totals.add(folder.folded)
    registry = CollectorRegistry()
    registry.register(ModelCollector(totals))
    return {
        s.name: s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if s.name.endswith("_sum") and s.labels.get("model") == "cam"
    }


def test_a_devices_sums_cannot_make_the_histogram_sums_infinite_or_negative() -> None:
    big = 1.7e308
    rows = [_rollup("1", big, big)] * 2 + [_rollup("2", -big, -big)] * 2
    sums = _sums(rows)
    bad = {k: v for k, v in sums.items() if not math.isfinite(v) or v < 0}
    assert not bad, bad


def test_a_negative_latency_sum_is_not_taken() -> None:
    sums = _sums([_rollup("1", -5000.0, 0.9)])
    assert sums["outpost_hub_inference_latency_seconds_sum"] >= 0, sums


def test_both_readers_keep_the_sums_within_their_bounds() -> None:
    typed = rollupread.read(_rollup("1", 1e300, 5.0))
    loose = rollupread.read_loosely(_rollup("1", -1.0, -2.0) + b"")
    off_shape = msgspec.msgpack.encode(
        {"kind": "rollup", "models": {"cam@1": {"count": 2, "latency_sum_ms": 1e300,
                                                "confidence_sum": 9.0, "extra": 1}}}
    )  # fmt: skip
    taken = rollupread.read(off_shape)  # an unknown field: the loose reader's
    assert typed is not None
    assert loose is not None
    assert taken is not None
    assert typed.models["cam@1"]["latency_sum_ms"] == rollupread.MAX_MEAN_LATENCY_MS
    assert typed.models["cam@1"]["confidence_sum"] == 1.0
    assert (loose.models["cam@1"]["latency_sum_ms"], loose.models["cam@1"]["confidence_sum"]) == (
        0.0,
        0.0,
    )
    assert taken.models["cam@1"]["latency_sum_ms"] == 2 * rollupread.MAX_MEAN_LATENCY_MS
    assert taken.models["cam@1"]["confidence_sum"] == 2.0
