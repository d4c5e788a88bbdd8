"""Which local inferences become results: all, flagged or none."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from edge.inference.reporting import Reporter, Reporting
from edge.inference.runner import Inference
from edge.rollup import Tally
from edge.store import AgentStore
from edge.store.streams import Bounds
from outpost.modelbundle import Manifest


def answer(label: str, confidence: float) -> Inference:
    return Inference(label, confidence, [confidence], [0], latency_ms=1.0, queued_ms=0.0)


@pytest.mark.parametrize(
    ("mode", "label", "confidence", "reason"),
    [
        ("flagged", "normal", 0.95, None),
        ("flagged", "bearing_fault", 0.95, "label"),
        ("flagged", "normal", 0.40, "low_confidence"),
        ("flagged", "bearing_fault", 0.40, "label"),
        ("all", "normal", 0.95, "all"),
        ("all", "normal", 0.40, "low_confidence"),
        ("none", "bearing_fault", 0.10, None),
    ],
)
def test_the_reporting_rule_decides_and_says_why(
    mode: str, label: str, confidence: float, reason: str | None
) -> None:
    rule = Reporting(mode, confidence_below=0.6)  # type: ignore[arg-type]
    assert rule.reason("normal", answer(label, confidence)) == reason


def test_a_model_without_a_normal_label_flags_only_low_confidence() -> None:
    rule = Reporting("flagged", confidence_below=0.6)
    assert rule.reason("", answer("cat", 0.9)) is None
    assert rule.reason("", answer("cat", 0.5)) == "low_confidence"


@pytest.mark.parametrize(
    ("mode", "label", "side", "carried"),
    [
        ("flagged", "spot", 96, True),  # flagged, and small enough: it goes
        ("all", "ok", 96, False),  # recorded because all are, not flagged: it stays
        ("flagged", "spot", 512, False),  # 256 KiB: over the cap, it stays
    ],
)
async def test_a_flagged_result_carries_its_int8_input_only_when_allowed_and_small(
    tmp_path: Path, mode: str, label: str, side: int, carried: bool
) -> None:
    tensor = np.arange(side * side, dtype=np.int64).astype(np.int8).reshape(1, side, side, 1)
    inference = Inference(label, 0.9, [0.9, 0.1], [0, 0], 1.0, 0.0, tensor=tensor)
    manifest = msgspec.convert(
        {
            "name": "surface-defect",
            "version": "1.0.0",
            "sha256": "0" * 64,
            "size": 1,
            "labels": ["spot", "ok"],
            "normal_label": "ok",
            "input": {"shape": [1, side, side, 1], "dtype": "int8", "scale": 1.0, "zero_point": 0},
            "output": {"shape": [1, 2], "dtype": "int8", "scale": 1.0, "zero_point": 0},
        },
        Manifest,
    )
    bounds = {"results": Bounds(0, 0, 0)}
    store = AgentStore(tmp_path / "store.db", bounds)
    await store.start()
    try:
        reporter = Reporter(store, Tally())
        closed = await reporter.report(Reporting(mode), manifest, inference, None)  # type: ignore[arg-type]
        allowed = Reporting(mode, flagged_inputs=True)  # type: ignore[arg-type]
        opened = await reporter.report(allowed, manifest, inference, None)
    finally:
        await store.close()  # synced: what is read next is what the disk holds
    store = AgentStore(tmp_path / "store.db", bounds)
    await store.start()
    try:
        (first, second) = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)
    finally:
        await store.close()

    assert (closed.recorded_seq, opened.recorded_seq) == (first[0], second[0])
    assert "input" not in first[2]
    assert ("input" in second[2]) is carried
    if carried:
        sent = second[2]["input"]
        assert (sent["dtype"], sent["shape"]) == ("int8", [1, side, side, 1])
        assert (
            np.frombuffer(sent["data"], np.int8).reshape(tensor.shape).tolist() == tensor.tolist()
        )
