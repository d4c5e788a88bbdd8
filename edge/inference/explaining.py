"""`POST /v1/explain/{model}`: an attribution of one input, computed with the model's
live runner (outpost/explain.py does the math).

The explanation runs on a worker thread, on an interpreter of its own made from the
runner's model for it (`ModelRunner.batches`): the perturbed inputs go through it
`explain.CHUNK` per invoke where the model's batch dimension allows, and the runner's
interpreters stay free for live requests meanwhile. That interpreter is made at the
first model call, after the budget is checked: a refused request costs nothing. The
method follows the input's shape unless the request names one: images [1, H, W, C]
occlusion, time series [1, T, C] occlusion per channel and window, vectors [1, N]
KernelSHAP.

Explanations run one at a time on a thread of their own (`Explanations`), a few more
waiting their turn and the rest refused at once: one is up to 20,000 model calls, tens of
seconds, and on asyncio's default executor (6 threads on 2 cores) a handful of them held
every thread, and all else the agent sends there (large bodies to decode, telemetry,
model swaps, certificate renewal) waited behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from edge.inference.workers import Workers
from outpost import explain

if TYPE_CHECKING:
    from edge.inference.runner import ModelRunner

KEYS = frozenset({"input", "dtype", "method", "patch", "stride", "window", "budget", "target"})
DEFAULT_BUDGET = 1000
# Explanations that may wait for the one under way; one more is refused (`ExplainBusy`).
# Few: each waits seconds to tens of seconds per explanation ahead of it.
EXPLAIN_WAITING = 2


class ExplainRequestError(ValueError):
    """A field of the request is wrong; the message names it."""


class ExplainBusy(RuntimeError):
    """As many explanations are under way and waiting as may be: try again shortly."""


class Explanations:
    """Explanations one at a time on a thread of their own, `waiting` more waiting their
    turn; past that one is refused at once (`ExplainBusy`)."""

    def __init__(self, waiting: int = EXPLAIN_WAITING) -> None:
        self._bound = 1 + waiting
        self._held = 0  # under way and waiting; touched only on the event loop
        self._turn = asyncio.Lock()
        self._worker = Workers(1, "explain")

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for an explanation's turn, or raise `ExplainBusy` at once when the bound
        is reached. A waiting request holds only its body's bytes: decode it in the turn."""
        if self._held >= self._bound:
            raise ExplainBusy(
                f"{self._held} explanations under way or waiting (limit {self._bound}); "
                "retry shortly"
            )
        self._held += 1
        try:
            async with self._turn:
                yield
        finally:
            self._held -= 1

    async def run(self, runner: ModelRunner, data: dict[str, Any]) -> dict[str, Any]:
        """`explain_blocking` on the explanations' thread (call it within a `turn`)."""
        return await self._worker.submit(explain_blocking, runner, data)

    def close(self) -> None:
        """Stop the thread once its explanation is done, without waiting for it."""
        self._worker.shutdown(wait=False)


def explain_blocking(runner: ModelRunner, data: dict[str, Any]) -> dict[str, Any]:
    """The explanation of `data`'s input (blocking: run it on a worker thread).

    Raises `ExplainRequestError`, `explain.BudgetError`, and what an inference raises
    (`InputError`, `ModelFault`)."""
    import numpy as np

    from edge.inference.tensors import prepare_input

    unknown = sorted(str(k) for k in data.keys() - KEYS)
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise ExplainRequestError(f"body.{unknown[0]}: unknown key (known: {known})")
    if "input" not in data:
        raise ExplainRequestError("body.input is required: the model's input tensor")
    m = runner.manifest
    spec = m.input
    dtype = data.get("dtype", "float32")
    if not isinstance(dtype, str):
        raise ExplainRequestError("body.dtype must be a string: float32 or int8")
    prepared = prepare_input(data["input"], dtype, spec)
    x = (prepared.tensor.astype(np.float32) - spec.zero_point) * spec.scale  # real values
    budget = _int(data, "budget", DEFAULT_BUDGET, 1, explain.MAX_BUDGET)
    target = _target(data.get("target"), m.labels)  # None: the model's own answer
    out = m.output

    with contextlib.ExitStack() as stack:
        run: Any = None

        def predict(batch: Any) -> Any:
            nonlocal run
            if run is None:  # at the first call: the explainer has checked the budget
                run = stack.enter_context(runner.batches(explain.CHUNK))
            q = np.clip(np.round(batch / spec.scale) + spec.zero_point, -128, 127)
            raw = run(q.astype(np.int8))
            return (raw.astype(np.float32) - out.zero_point) * out.scale

        found, extra, method = _explain(
            predict, x[0], target, budget, data, spec.shape, m.explain_baseline
        )
    return {
        "model": m.name,
        "version": m.version,
        "label": m.labels[found.target],
        "score": found.score,
        "method": method,
        "calls": found.calls,
        "attribution": np.round(found.values, 6).tolist(),
        **extra,
    }


def _explain(
    predict: explain.Predict,
    one: Any,
    target: int | None,
    budget: int,
    data: dict[str, Any],
    shape: list[int],
    baseline: float | None,
) -> tuple[explain.Attribution, dict[str, Any], str]:
    """The explainer the request and the input's shape call for, run; `baseline` is the
    model's own (its manifest's explain_baseline), or None for the input kind's."""
    import numpy as np

    rank = one.ndim
    method = data.get("method") or ("occlusion" if rank >= 2 else "kernelshap")
    if method == "occlusion" and rank == 3:
        side = min(one.shape[0], one.shape[1])
        patch = _int(data, "patch", max(1, side // 8), 1, side)
        stride = _int(data, "stride", max(1, patch // 2), 1, side)
        used = float(one.mean()) if baseline is None else baseline
        found = explain.occlusion_image(
            predict, one, target, patch=patch, stride=stride, baseline=used, budget=budget
        )
        top = {"row": found.top[0], "col": found.top[1], "size": patch}
        return found, {"patch": patch, "stride": stride, "top": top, "baseline": used}, method
    if method == "occlusion" and rank == 2:
        window = _int(data, "window", max(1, one.shape[0] // 8), 1, one.shape[0])
        # At rest, a sensor reads zero: the baseline a series is compared against.
        rest = np.full(one.shape[1], 0.0 if baseline is None else baseline)
        found = explain.occlusion_series(
            predict, one, target, window=window, baseline=rest, budget=budget
        )
        extra = {"window": window, "channels": found.shares, "baseline": float(rest[0]),
                 "top": {"window": found.top[0], "channel": found.top[1]}}  # fmt: skip
        return found, extra, method
    if method == "kernelshap" and rank == 1:
        rest = np.full_like(one, 0.0 if baseline is None else baseline)
        found = explain.kernel_shap(predict, one, rest, target, budget=budget)
        return found, {"top": {"feature": found.top[0]}, "baseline": float(rest[0])}, method
    raise ExplainRequestError(
        f"body.method: {method!r} does not fit an input of shape {shape} "
        "(occlusion for images [1, H, W, C] and series [1, T, C], kernelshap for [1, N])"
    )


def _int(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ExplainRequestError(f"body.{key} must be an integer from {low} to {high}")
    return value


def _target(value: Any, labels: list[str]) -> int | None:
    if value is None:
        return None
    if value not in labels:
        raise ExplainRequestError(f"body.target: {value!r} is not one of {labels}")
    return labels.index(value)
