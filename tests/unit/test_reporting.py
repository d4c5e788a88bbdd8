"""Which local inferences become results: all, flagged or none."""

from __future__ import annotations

import pytest

from edge.inference.reporting import Reporting
from edge.inference.runner import Inference


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
