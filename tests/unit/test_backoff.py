"""Unit tests of outpost/backoff.py: capped, fully jittered exponential back-off."""

from __future__ import annotations

import random

import pytest

from outpost import backoff


@pytest.fixture(autouse=True)
def seeded() -> None:
    random.seed(1234)


def test_delay_stays_within_full_jitter_bounds() -> None:
    for cap in (0.5, 5.0, 60.0, 3600.0):
        for attempt in range(200):
            ceiling = min(cap, 1.5**attempt)
            for _ in range(20):
                value = backoff.delay(attempt, cap=cap)
                assert 0.0 <= value <= ceiling


def test_delay_never_exceeds_cap_at_huge_attempts() -> None:
    for attempt in (31, 100, 1000, 10**6):
        for _ in range(200):
            assert 0.0 <= backoff.delay(attempt, cap=60.0) <= 60.0


def test_delay_asks_for_exactly_the_capped_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, float]] = []

    def fake_uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return high

    monkeypatch.setattr(random, "uniform", fake_uniform)
    assert backoff.delay(0, cap=60) == 1.0
    assert backoff.delay(1, cap=60) == 1.5
    assert backoff.delay(4, cap=60) == pytest.approx(1.5**4)
    assert backoff.delay(1000, cap=60) == 60
    assert backoff.delay(3, cap=2, base=2.0) == 2
    assert calls[0] == (0.0, 1.0)
    assert all(low == 0.0 for low, _high in calls)


def test_delay_is_jittered() -> None:
    values = {backoff.delay(10, cap=60.0) for _ in range(50)}
    assert len(values) > 40  # not lock-step
    assert min(values) < 20 < max(values)  # spread over [0, 57.7]


def test_delay_grows_until_the_cap() -> None:
    def mean(attempt: int) -> float:
        return sum(backoff.delay(attempt, cap=30.0) for _ in range(2000)) / 2000

    assert mean(0) < mean(4) < mean(8) < 30.0 / 2 + 1
    assert mean(20) == pytest.approx(15.0, rel=0.1)
