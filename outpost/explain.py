"""What a model looked at: attributions of one input toward one label, by perturbation.

Shared by the agent and the hub (numpy only, imported when used). Each explainer takes
`predict`, a function from a batch of real-valued inputs (shape [n, *input]) to their
class scores ([n, classes]), and calls it on the input and perturbed copies of it,
`CHUNK` at a time, within a `budget` of model calls (one input counts one call); a
request that would need more is refused before any call, naming the numbers. The target
label is the caller's, or (None) the model's own answer on the input.

- `occlusion_image`: square patches; a patch's attribution is the drop of the target's
  score with the patch replaced by a baseline, plus the target's score with only the
  patch kept (the rest the baseline). The heat map has one cell per patch position.
- `occlusion_series`: the same per window of one channel (the rest of the input, or
  that window, the channel's baseline); attribution per (window, channel), and each
  channel's share of the positive total.
- `kernel_shap`: KernelSHAP for small vector inputs, solved by weighted least squares
  with the efficiency constraint (attributions sum to f(x) - f(baseline)): coalitions
  with their Shapley kernel weights, every one of the sizes the budget holds whole
  and the rest sampled in complementary pairs; with a budget of 2^N calls, every
  coalition, and the values are the exact Shapley values.

Measured on the real interpreter (tests/integration/test_explain_accuracy.py; how, and
across seeds, in docs/explain.md): the top patch on the defect of 197 of 200 synthetic
surfaces; the faulty axis the largest share of 186 of 200 vibration windows, the model's
own answer explained (161 toward bearing_fault whatever the answer: a window the model
reads as looseness holds no bearing_fault score to take away).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import combinations
from typing import Any

Predict = Callable[[Any], Any]  # np.ndarray [n, *shape] -> np.ndarray [n, classes]
MAX_BUDGET = 20_000
# Perturbed inputs built and scored at a time: memory stays a few of them (16 images of
# 96x96 floats: 0.6 MB, where all 451 of a default explanation would take 17 MB), and
# it is the batch an interpreter with a free batch dimension runs per invoke.
CHUNK = 16


class BudgetError(ValueError):
    """The explanation would need more model calls than its budget allows."""


@dataclass(frozen=True)
class Attribution:
    values: Any  # np.ndarray: the heat map, per (window, channel), or per feature
    calls: int  # model calls made, the input's own included
    target: int  # the label explained
    score: float  # the target's score on the input itself
    top: tuple[int, ...]  # the index of the largest attribution
    shares: list[float] | None = None  # per channel (time series)


def _check(calls: int, budget: int, what: str) -> None:
    if budget > MAX_BUDGET:
        raise BudgetError(f"budget {budget} is over the most allowed, {MAX_BUDGET}")
    if calls > budget:
        raise BudgetError(f"{what} needs {calls} model calls, over the budget of {budget}")


def _scores(predict: Predict, inputs: Iterator[Any], count: int) -> Any:
    """The scores of `count` inputs drawn from `inputs`, scored CHUNK at a time."""
    import numpy as np

    out = []
    for start in range(0, count, CHUNK):
        batch = np.stack([next(inputs) for _ in range(min(CHUNK, count - start))])
        out.append(np.asarray(predict(batch), dtype=np.float64))
    return np.concatenate(out)


def _both_sides(scores: Any, target: int | None, n: int) -> tuple[int, float, Any]:
    """From the scores of [input, n hidden, n alone]: the target, its score, and per
    perturbation what hiding it takes away plus what keeping it alone holds."""
    import numpy as np

    chosen = int(np.argmax(scores[0])) if target is None else target
    column = scores[:, chosen]
    # Both sides of a patch or window: the first alone misses evidence spread over the
    # input (a long scratch, a fault that repeats): hiding one piece of it leaves a
    # saturated score unmoved, while that piece alone still carries some of it.
    return chosen, float(column[0]), (column[0] - column[1 : n + 1]) + column[n + 1 :]


def occlusion_image(
    predict: Predict,
    x: Any,
    target: int | None,
    *,
    patch: int,
    stride: int,
    baseline: float,
    budget: int,
) -> Attribution:
    """`x` of shape [H, W, C] (real values)."""
    import numpy as np

    h, w = x.shape[0], x.shape[1]
    if not (1 <= patch <= min(h, w)) or stride < 1:
        raise ValueError(f"patch must be 1 to {min(h, w)} and stride at least 1")
    rows = list(range(0, h - patch + 1, stride))
    cols = list(range(0, w - patch + 1, stride))
    positions = [(r, c) for r in rows for c in cols]
    n = len(positions)
    _check(1 + 2 * n, budget, f"occlusion with patch {patch}, stride {stride}")

    def inputs() -> Iterator[Any]:
        yield x
        for r, c in positions:
            hidden = x.copy()
            hidden[r : r + patch, c : c + patch] = baseline
            yield hidden
        for r, c in positions:
            alone = np.full_like(x, baseline)
            alone[r : r + patch, c : c + patch] = x[r : r + patch, c : c + patch]
            yield alone

    chosen, score, values = _both_sides(_scores(predict, inputs(), 1 + 2 * n), target, n)
    heat = values.reshape(len(rows), len(cols))
    top = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return Attribution(heat, 1 + 2 * n, chosen, score, (rows[top[0]], cols[top[1]]))


def occlusion_series(
    predict: Predict, x: Any, target: int | None, *, window: int, baseline: Any, budget: int
) -> Attribution:
    """`x` of shape [T, C] (real values); `baseline` one value per channel."""
    import numpy as np

    t, channels = x.shape
    if not 1 <= window <= t:
        raise ValueError(f"window must be 1 to {t}")
    starts = list(range(0, t - window + 1, window))
    cells = [(s, ch) for s in starts for ch in range(channels)]
    n = len(cells)
    _check(1 + 2 * n, budget, f"occlusion with window {window}")
    rest = np.broadcast_to(np.asarray(baseline, dtype=x.dtype), x.shape)

    def inputs() -> Iterator[Any]:
        yield x
        for s, ch in cells:
            hidden = x.copy()
            hidden[s : s + window, ch] = rest[s : s + window, ch]
            yield hidden
        for s, ch in cells:
            alone = rest.copy()
            alone[s : s + window, ch] = x[s : s + window, ch]
            yield alone

    chosen, score, flat = _both_sides(_scores(predict, inputs(), 1 + 2 * n), target, n)
    values = flat.reshape(len(starts), channels)
    positive = np.clip(values, 0, None).sum(axis=0)
    total = float(positive.sum())
    shares = [float(p / total) if total > 0 else 0.0 for p in positive]
    top = np.unravel_index(int(np.argmax(values)), values.shape)
    return Attribution(values, 1 + 2 * n, chosen, score, (int(top[0]), int(top[1])), shares)


def _coalitions(n: int, count: int, rng: Any) -> tuple[Any, Any]:
    """`count` coalitions of n features (masks of those present, sizes 1 to n-1) and
    their weights in the fit, drawn as the shap library's KernelExplainer draws them.

    Whole sizes are enumerated from the outside in (sizes 1 and n-1 weigh most in the
    Shapley kernel) while the calls left would draw each coalition of the size at least
    once; then the rest are sampled by the kernel's weight, each with its complement
    (paired draws cancel much of the noise). With count = 2^n - 2 every size is
    enumerated and the values are the exact Shapley values.
    """
    import numpy as np

    # The kernel's weight of all coalitions of size k together: (n-1) / (k (n-k)).
    size_weight = {k: (n - 1) / (k * (n - k)) for k in range(1, n)}
    norm = sum(size_weight.values())
    masks: list[Any] = []
    weights: list[float] = []
    left, weight_left, sampled = count, 1.0, list(range(1, n))
    for small in range(1, n // 2 + 1):
        pair = sorted({small, n - small})
        subsets = sum(math.comb(n, k) for k in pair)
        mass = sum(size_weight[k] for k in pair) / norm
        if left * mass / weight_left < subsets - 1e-8:
            break
        for k in pair:
            for members in combinations(range(n), k):
                masks.append(np.isin(np.arange(n), members))
                weights.append(size_weight[k] / norm / math.comb(n, k))
            sampled.remove(k)
        left, weight_left = left - subsets, weight_left - mass
    if sampled and left > 0:
        p = np.array([size_weight[k] for k in sampled])
        drawn = []
        for k in rng.choice(sampled, size=(left + 1) // 2, p=p / p.sum()):
            mask = np.zeros(n, bool)
            mask[rng.choice(n, size=k, replace=False)] = True
            drawn += [mask, ~mask]
        drawn = drawn[:left]  # an odd count: the last draw without its complement
        masks += drawn
        weights += [weight_left / len(drawn)] * len(drawn)
    return np.array(masks).reshape(-1, n), np.array(weights)


def kernel_shap(
    predict: Predict, x: Any, baseline: Any, target: int | None, *, budget: int, seed: int = 0
) -> Attribution:
    """`x` and `baseline` of shape [N] (real values), N small (a few dozen at most)."""
    import numpy as np

    n = x.shape[0]
    if n < 2:
        raise ValueError("kernel_shap needs at least 2 features")
    _check(2 + n, budget, f"kernel_shap of {n} features")  # the least it can do
    masks, weights = _coalitions(n, min(budget, 2**n) - 2, np.random.default_rng(seed))
    coalitions = iter([x, baseline, *np.where(masks, x[None], baseline[None])])
    scores = _scores(predict, coalitions, 2 + len(masks))
    chosen = int(np.argmax(scores[0])) if target is None else target
    fx, f0 = float(scores[0, chosen]), float(scores[1, chosen])
    y = scores[2:, chosen] - f0
    # Efficiency as a constraint: eliminate the last feature, phi_n = (fx - f0) - sum;
    # weighted least squares by scaling each row with the root of its weight.
    z = masks.astype(float)
    root = np.sqrt(weights)[:, None]
    a = (z[:, :-1] - z[:, -1:]) * root
    b = (y - z[:, -1] * (fx - f0)) * root[:, 0]
    phi_rest, *_ = np.linalg.lstsq(a, b, rcond=None)
    phi = np.append(phi_rest, (fx - f0) - phi_rest.sum())
    top = (int(np.argmax(np.abs(phi))),)
    return Attribution(phi, 2 + len(masks), chosen, fx, top)
