"""The sample of disagreeing inputs a shadow candidate keeps between two roll-ups: at most
`reservoir_size` per candidate, each disagreement equally likely to be among them
(Algorithm R), none larger than MAX_INPUT_BYTES."""

from __future__ import annotations

import collections
import random

from edge.inference.runner import Inference
from edge.inference.shadow import MAX_INPUT_BYTES, Shadows
from edge.rollup import Tally


def _answer(label: str) -> Inference:
    return Inference(label, 0.9, [0.9, 0.1], [100, -100], 1.0, 0.0)


def _disagree(shadows: Shadows, n: int) -> None:
    for i in range(n):
        shadows._keep("m", "1.0.0", "1.1.0", [i], "float32", _answer("a"), _answer("b"))


def test_at_most_the_reservoir_is_kept_and_taking_empties_it() -> None:
    shadows = Shadows(Tally(), rng=random.Random(1))
    shadows.reservoir_size = 3
    _disagree(shadows, 1000)
    kept = shadows.take_disagreements()
    assert len(kept) == 3
    assert {(k["live_label"], k["candidate_label"]) for k in kept} == {("a", "b")}
    assert shadows.take_disagreements() == []


def test_each_disagreement_is_equally_likely_to_be_kept() -> None:
    counts: collections.Counter[int] = collections.Counter()
    rng = random.Random(7)
    for _ in range(4000):
        shadows = Shadows(Tally(), rng=rng)
        shadows.reservoir_size = 2
        _disagree(shadows, 10)
        counts.update(k["input"][0] for k in shadows.take_disagreements())
    # 4000 runs x 2 kept over 10 inputs: 800 each expected; a biased sampler (say,
    # keeping the first or the last) lands far outside this band.
    assert set(counts) == set(range(10))
    assert all(650 < counts[i] < 950 for i in range(10)), counts


def test_a_large_input_is_not_kept() -> None:
    shadows = Shadows(Tally(), rng=random.Random(1))
    shadows.reservoir_size = 3
    big = [0] * (MAX_INPUT_BYTES // 2)  # "0, " per item: over the bound as JSON
    shadows._keep("m", "1.0.0", "1.1.0", big, "float32", _answer("a"), _answer("b"))
    _disagree(shadows, 1)
    assert [k["input"] for k in shadows.take_disagreements()] == [[0]]
