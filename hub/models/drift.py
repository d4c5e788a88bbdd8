"""Model drift: each device's recent answers against the rest of the fleet's.

For every model version, a device's label distribution and confidence histogram over
the last `WINDOW_S` are compared with those of the other devices running the same
version by the population stability index

    PSI = sum over bins i of (p_i - q_i) * ln(p_i / q_i)

with p the device's shares and q the rest of the fleet's: per bin the median share over
the other devices (normalised to sum to 1, see `reference`), and an empty bin counted
as `EPSILON` (so the logarithm stays finite). Below 0.1 the two are alike; 0.1 to 0.25 is
a moderate shift; from 0.25 on the device is flagged as drifting. A device needs
`MIN_COUNT` inferences in the window to be judged, and only such devices make up the
reference (at least one other): a handful of answers says nothing about a distribution.

Pure functions: the hub reads the counts from its store and passes them in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hub.store.modelstats import Distribution

WINDOW_S = 24 * 3600.0
MIN_COUNT = 50
EPSILON = 1e-4
STABLE_BELOW = 0.1
DRIFT_FROM = 0.25

Level = Literal["stable", "moderate", "drift", "insufficient"]


@dataclass(frozen=True)
class DeviceDrift:
    """One device's answers of one model version against the rest of the fleet."""

    device_id: str
    count: int  # its inferences in the window
    psi_labels: float | None  # None: too few inferences here or in the rest of the fleet
    psi_confidence: float | None
    level: Level

    @property
    def psi(self) -> float | None:
        values = [v for v in (self.psi_labels, self.psi_confidence) if v is not None]
        return max(values) if values else None

    @property
    def flagged(self) -> bool:
        return self.level == "drift"


@dataclass(frozen=True)
class VersionDrift:
    model: str
    version: str
    devices: list[DeviceDrift]

    @property
    def flagged(self) -> list[str]:
        return [d.device_id for d in self.devices if d.flagged]


def psi(observed: Sequence[float], expected: Sequence[float]) -> float:
    """The population stability index of two histograms over the same bins (counts or
    shares; each is normalised). An empty histogram compares as 0."""
    p_total, q_total = sum(observed), sum(expected)
    if p_total <= 0 or q_total <= 0:
        return 0.0
    total = 0.0
    for p_count, q_count in zip(observed, expected, strict=True):
        p = max(p_count / p_total, EPSILON)
        q = max(q_count / q_total, EPSILON)
        total += (p - q) * math.log(p / q)
    return total


def psi_of_counts(observed: Mapping[str, int], expected: Mapping[str, int]) -> float:
    """PSI of two label counts: the bins are every label either names."""
    bins = sorted(observed.keys() | expected.keys())
    return psi([observed.get(b, 0) for b in bins], [expected.get(b, 0) for b in bins])


def level(value: float | None) -> Level:
    if value is None:
        return "insufficient"
    if value >= DRIFT_FROM:
        return "drift"
    return "moderate" if value >= STABLE_BELOW else "stable"


def compare(
    model: str, version: str, devices: Mapping[str, Distribution], *, min_count: int = MIN_COUNT
) -> VersionDrift:
    """Each device of one model version against the typical distribution of the others."""
    judged_ones = sorted(k for k, d in devices.items() if d.count >= min_count)
    psis: dict[str, tuple[float, float]] = {}
    if len(judged_ones) >= 2:
        # Every judged device's bins are the labels any judged device names: its own and
        # the others' together.
        labels = sorted(set().union(*(devices[k].labels for k in judged_ones)))
        by_labels = against_the_others(
            [[devices[k].labels.get(b, 0) for b in labels] for k in judged_ones]
        )
        by_confidence = against_the_others([devices[k].confidence for k in judged_ones])
        psis = dict(zip(judged_ones, zip(by_labels, by_confidence, strict=True), strict=True))
    judged = []
    for device_id, mine in sorted(devices.items()):
        if device_id not in psis:
            judged.append(DeviceDrift(device_id, mine.count, None, None, "insufficient"))
            continue
        labels_psi, confidence_psi = psis[device_id]
        judged.append(
            DeviceDrift(
                device_id,
                mine.count,
                round(labels_psi, 6),
                round(confidence_psi, 6),
                level(max(labels_psi, confidence_psi)),
            )
        )
    return VersionDrift(model, version, judged)


def against_the_others(histograms: Sequence[Sequence[int]]) -> list[float]:
    """Each histogram's `psi` against the `reference` of all the others (two or more, of
    the same bins): the same numbers as those functions give, rounded to 6 places, in
    array arithmetic.

    Each column of shares is sorted once and a histogram's leave-one-out median found by
    its rank in it, for every cell at once. In pure Python this took 2.2 s of CPU for
    25,000 devices (a /metrics scrape judges drift each time), 0.36 s in numpy, which the
    hub then loads at its first judgement."""
    import numpy as np  # here: only a hub that judges drift loads it

    counts = np.asarray(histograms, dtype=float)
    rows, bins = counts.shape
    if bins == 0:
        return [0.0] * rows
    totals = counts.sum(axis=1, keepdims=True)
    mine = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    ordered = np.sort(mine, axis=0)
    rank = np.stack(
        [np.searchsorted(ordered[:, j], mine[:, j], side="left") for j in range(bins)], axis=1
    )
    middle = (rows - 1) // 2

    def at(k: int) -> Any:  # each column's k-th share, the row's own left out
        return np.take_along_axis(ordered, np.where(k < rank, k, k + 1), axis=0)

    medians = at(middle) if (rows - 1) % 2 == 1 else (at(middle - 1) + at(middle)) / 2
    reference_total = medians.sum(axis=1, keepdims=True)
    reference = np.divide(medians, reference_total, out=medians.copy(), where=reference_total > 0)
    # `psi` normalises both sides again, and compares an empty side as 0.
    expected_total = reference.sum(axis=1, keepdims=True)
    p = np.maximum(mine, EPSILON)
    q = np.maximum(
        np.divide(
            reference, expected_total, out=np.zeros_like(reference), where=expected_total > 0
        ),
        EPSILON,
    )
    psi_of = ((p - q) * np.log(p / q)).sum(axis=1)
    empty = (totals[:, 0] <= 0) | (expected_total[:, 0] <= 0)
    return [0.0 if e else float(v) for v, e in zip(psi_of, empty, strict=True)]


def shares(counts: Sequence[int]) -> list[float]:
    """A histogram's counts as shares of its total (all 0 for an empty one)."""
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def reference(histograms: Sequence[Sequence[int]]) -> list[float]:
    """The fleet's typical histogram: per bin, the median of the devices' shares,
    normalised. A median, not a pooled sum, so that a few drifting devices cannot pull
    the reference towards themselves and make the healthy ones look drifted."""
    columns = zip(*(shares(counts) for counts in histograms), strict=True)
    return normalised([statistics.median(column) for column in columns])


def normalised(medians: list[float]) -> list[float]:
    total = sum(medians)
    return [m / total for m in medians] if total > 0 else medians


def evaluate(
    distributions: Mapping[tuple[str, str], Mapping[str, Distribution]],
    *,
    min_count: int = MIN_COUNT,
) -> list[VersionDrift]:
    """Every model version, by name and version."""
    return [
        compare(model, version, devices, min_count=min_count)
        for (model, version), devices in sorted(distributions.items())
    ]
