"""The roll-back decision: consecutive faults of an activated version, counted apart from
any interpreter."""

from __future__ import annotations

from edge.inference.faults import FaultWatch


def test_a_version_with_somewhere_to_go_back_to_rolls_back_at_the_limit() -> None:
    watch = FaultWatch(limit=5, fallback="1.0.0")
    decisions = [watch.fault(f"fault {n}") for n in range(1, 6)]

    assert decisions == [None, None, None, None, "1.0.0"]
    assert watch.streak == 5
    assert watch.last_fault == "fault 5"


def test_a_success_clears_the_streak() -> None:
    watch = FaultWatch(limit=3, fallback="1.0.0")
    watch.fault("a")
    watch.fault("b")
    watch.success()

    assert [watch.fault("c"), watch.fault("d")] == [None, None]
    assert watch.fault("e") == "1.0.0"


def test_it_decides_once() -> None:
    watch = FaultWatch(limit=2, fallback="1.0.0")
    assert [watch.fault("x") for _ in range(6)] == [None, "1.0.0", None, None, None, None]
    assert watch.fallback is None


def test_a_version_without_a_fallback_only_counts() -> None:
    # Serving since start, or the first version of a model: nothing proven to return to.
    watch = FaultWatch(limit=2)
    assert [watch.fault("x") for _ in range(10)] == [None] * 10
    assert watch.streak == 10


def test_a_fallback_armed_late_counts_the_faults_already_seen() -> None:
    watch = FaultWatch(limit=3)
    watch.fault("x")
    watch.fault("y")
    watch.fallback = "2.0.0"  # armed after a restart, from the deployer's records
    assert watch.fault("z") == "2.0.0"
