"""The population stability index and the drift verdicts, on hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from hub.models import drift
from hub.store.modelstats import Distribution, Sums


def test_psi_of_identical_histograms_is_zero() -> None:
    assert drift.psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)


def test_psi_matches_the_formula_by_hand() -> None:
    # p = (0.5, 0.5), q = (0.25, 0.75):
    # (0.5 - 0.25) ln(0.5 / 0.25) + (0.5 - 0.75) ln(0.5 / 0.75)
    # = 0.25 * 0.693147 + (-0.25) * (-0.405465) = 0.173287 + 0.101366 = 0.274653
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)
    assert drift.psi([25, 75], [50, 50]) == pytest.approx(0.274653, abs=1e-6)  # symmetric


def test_an_empty_bin_counts_as_epsilon() -> None:
    # p = (1, 0) -> (1, 1e-4); q = (0.5, 0.5):
    # (1 - 0.5) ln(1 / 0.5) + (1e-4 - 0.5) ln(1e-4 / 0.5)
    expected = 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert drift.psi([10, 0], [5, 5]) == pytest.approx(expected)
    assert expected == pytest.approx(4.605, abs=1e-3)


def test_label_counts_compare_over_every_label_either_names() -> None:
    # device: ok 90, crack 10; fleet: ok 90, scratch 10 -> bins crack, ok, scratch
    # p = (0.1, 0.9, 1e-4), q = (1e-4, 0.9, 0.1)
    term = (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert drift.psi_of_counts({"ok": 90, "crack": 10}, {"ok": 90, "scratch": 10}) == (
        pytest.approx(2 * term)
    )


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (None, "insufficient"),
        (0.0, "stable"),
        (0.099, "stable"),
        (0.1, "moderate"),
        (0.249, "moderate"),
        (0.25, "drift"),
        (3.0, "drift"),
    ],
)
def test_levels_follow_the_documented_thresholds(value: float | None, level: str) -> None:
    assert drift.level(value) == level


def conf(*bins: int) -> list[int]:
    return [*bins, *[0] * (10 - len(bins))]


def test_the_reference_is_the_median_share_of_each_bin_normalised() -> None:
    # shares: (0.5, 0.5), (0.9, 0.1), (0.8, 0.2) -> medians (0.8, 0.2): sum 1 already
    assert drift.reference([[5, 5], [9, 1], [80, 20]]) == pytest.approx([0.8, 0.2])
    # (1, 0), (0, 1) -> medians (0.5, 0.5); (1, 0, 0), (0, 1, 0), (0, 0, 1) -> 0s
    assert drift.reference([[3, 0], [0, 7]]) == pytest.approx([0.5, 0.5])
    assert drift.reference([[1, 0, 0], [0, 1, 0], [0, 0, 1]]) == [0.0, 0.0, 0.0]


def test_a_device_is_compared_with_the_rest_of_the_fleet() -> None:
    normal = Distribution(100, conf(0, 0, 0, 0, 0, 0, 0, 0, 20, 80), {"ok": 90, "crack": 10})
    odd = Distribution(100, conf(0, 0, 0, 0, 0, 50, 0, 0, 0, 50), {"ok": 50, "crack": 50})
    few = Distribution(10, conf(10), {"crack": 10})
    fleet = {"a": normal, "b": normal, "e": normal, "f": normal, "g": normal}
    result = drift.compare("m", "1", {**fleet, "c": odd, "d": few})

    by_id = {d.device_id: d for d in result.devices}
    # c against the five normal devices (d has too few to count): p = (crack 0.5, ok 0.5),
    # q = (0.1, 0.9): 0.4 ln 5 + (-0.4) ln(0.5 / 0.9) = 0.643775 + 0.235115 = 0.878890
    assert by_id["c"].psi_labels == pytest.approx(0.878890, abs=1e-6)
    # confidence: p = (bin 5: 0.5, bin 8: 1e-4, bin 9: 0.5), q = (1e-4, 0.2, 0.8)
    expected = (
        (0.5 - 1e-4) * math.log(0.5 / 1e-4)
        + (1e-4 - 0.2) * math.log(1e-4 / 0.2)
        + (0.5 - 0.8) * math.log(0.5 / 0.8)
    )
    assert by_id["c"].psi_confidence == pytest.approx(expected, abs=1e-6)
    assert by_id["c"].flagged
    assert by_id["c"].level == "drift"
    # a against b, e, f, g and c: the median share of each bin is the normal one
    assert by_id["a"].psi_labels == pytest.approx(0.0)
    assert by_id["a"].psi_confidence == pytest.approx(0.0)
    assert by_id["a"].level == "stable"
    assert not by_id["a"].flagged
    assert by_id["d"].level == "insufficient"
    assert by_id["d"].psi is None
    assert result.flagged == ["c"]


def test_a_version_on_one_device_has_nothing_to_compare_with() -> None:
    only = Distribution(500, conf(0, 0, 0, 0, 0, 0, 0, 0, 0, 500), {"ok": 500})
    (result,) = drift.evaluate({("m", "1"): {"a": only}})
    assert result.devices[0].level == "insufficient"


def test_an_hour_summed_twice_counts_once_and_a_dropped_device_leaves_no_version() -> None:
    """The day is summed an hour a unit of work; a unit run again (a retried transaction)
    must not add its hour twice; devices dropped after (revoked meanwhile) leave nothing,
    not even a model version only they ran."""
    sums = Sums()
    bins = [0] * 8 + [1, 9]
    row = ("m", "1", "dev-1", 10, json.dumps(bins), '{"a": 10}')
    sums.add(5, [row, ("solo", "1", "dev-2", 4, json.dumps([4] + [0] * 9), '{"b": 4}')])
    sums.add(5, [row])  # the same hour again
    sums.add(6, [row])
    summed = sums.distributions()[("m", "1")]["dev-1"]
    assert summed == Distribution(20, [0] * 8 + [2, 18], {"a": 20})
    sums.drop({"dev-2"})
    assert set(sums.distributions()) == {("m", "1")}
