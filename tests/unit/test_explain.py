"""The explainers' math on models whose answers are known: KernelSHAP gives a linear
model's exact attributions w_i (x_i - b_i) and comes close to the enumerated Shapley
values of a model with an interaction; occlusion finds the region a model reads; a
request over its budget is refused before any call."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from outpost import explain


def _scores(values: np.ndarray) -> np.ndarray:
    """A two-class 'model' from one real score per input."""
    return np.stack([values, -values], axis=1)


def test_kernel_shap_is_exact_on_a_linear_model() -> None:
    w = np.array([2.0, -1.0, 0.5, 3.0, 0.0])
    x, b = np.array([1.0, 2.0, -1.0, 0.5, 7.0]), np.zeros(5)
    calls = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return _scores(batch @ w + 1.0)

    found = explain.kernel_shap(predict, x, b, 0, budget=200)
    assert np.allclose(found.values, w * (x - b), atol=1e-9)
    assert found.top == (0,)  # |2.0| the largest (a tie with |-2.0|: the first)
    assert sum(calls) == found.calls <= 200


def test_kernel_shap_comes_close_to_the_shapley_values_of_an_interaction() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        return _scores(batch[:, 0] * batch[:, 1] + batch[:, 2] ** 2 - batch[:, 3])

    x, b = np.array([2.0, 3.0, 1.5, 1.0]), np.zeros(4)
    exact = exact_shapley(predict, x, b, 0)
    assert np.allclose(exact, [3.0, 3.0, 2.25, -1.0])
    found = explain.kernel_shap(predict, x, b, 0, budget=2000, seed=3)
    assert np.allclose(found.values, exact, atol=0.25), found.values  # sampled: close
    assert found.values.sum() == pytest.approx(6 + 2.25 - 1)  # efficiency holds exactly


def test_occlusion_finds_the_region_a_model_reads() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        return _scores(batch[:, 40:52, 60:72, 0].mean(axis=(1, 2)))

    x = np.ones((96, 96, 1))
    found = explain.occlusion_image(predict, x, 0, patch=12, stride=6, baseline=0.0, budget=451)
    r, c = found.top
    assert 40 - 12 < r < 52
    assert 60 - 12 < c < 72
    assert found.values.shape == (15, 15)
    assert found.calls == 1 + 2 * 15 * 15


def test_series_occlusion_gives_the_channel_the_model_reads_the_whole_share() -> None:
    def predict(batch: np.ndarray) -> np.ndarray:
        return _scores(np.abs(batch[:, :, 2]).sum(axis=1))

    x = np.random.default_rng(1).normal(size=(128, 3))
    found = explain.occlusion_series(predict, x, 0, window=16, baseline=np.zeros(3), budget=100)
    assert found.shares is not None
    assert found.shares[2] == pytest.approx(1.0)
    assert found.calls == 1 + 2 * 8 * 3


def test_over_budget_is_refused_before_any_call_and_under_it_runs() -> None:
    calls = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return _scores(batch.reshape(len(batch), -1).sum(axis=1))

    x = np.ones((96, 96, 1))
    with pytest.raises(explain.BudgetError, match="needs 451 model calls, over the budget of 100"):
        explain.occlusion_image(predict, x, 0, patch=12, stride=6, baseline=0.0, budget=100)
    assert calls == []
    with pytest.raises(explain.BudgetError, match="over the most allowed"):
        explain.occlusion_image(predict, x, 0, patch=12, stride=6, baseline=0.0, budget=10**6)
    found = explain.occlusion_image(predict, x, 0, patch=12, stride=6, baseline=0.0, budget=451)
    assert found.calls == 451 == sum(calls)


def exact_shapley(predict: explain.Predict, x: Any, baseline: Any, target: int) -> Any:
    """Shapley values by enumeration (2^N calls each): the reference, N tiny."""
    n = x.shape[0]
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for s in itertools.combinations(others, k):
                mask = np.zeros(n, bool)
                mask[list(s)] = True
                without = np.where(mask, x, baseline)
                mask[i] = True
                with_i = np.where(mask, x, baseline)
                scores = predict(np.stack([with_i, without]))[:, target]
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += weight * (scores[0] - scores[1])
    return phi
