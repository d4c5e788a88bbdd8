"""Explanations' cost: one input explained (edge/inference/explaining.py, the code of
the agent's and the hub's explain routes) on each shipped model, against the bare
interpreter's invoke time times the number of model calls it made, in the same run.

The explanation runs its perturbed inputs 16 per invoke on an interpreter it makes for
itself (ModelRunner.batches), so it can come under the one-per-invoke limit on a model
whose invoke has a fixed cost to spread; the making (0.2 to 0.4 ms) is part of its time.
The note adds the peak of Python and numpy allocations during one explanation
(tracemalloc; the interpreter's own arena is not in it).
"""

from __future__ import annotations

import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.explaining import explain_blocking
from edge.inference.runner import ModelRunner
from edge.inference.runtime import choose_runtime
from outpost.modelbundle import read_bundle
from tests.bench.common import Result
from tests.support import SHIPPED_MODELS

ROUNDS = 5


def _bare_invoke_s(folder: Path) -> float:
    """The median of set_tensor + invoke + get_tensor on one interpreter."""
    bundle = read_bundle(folder)
    interpreter = choose_runtime().interpreter(str(bundle.model_path), 1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert bundle.sample is not None
    tensor = np.array(bundle.sample.input, np.int8)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        interpreter.set_tensor(inp["index"], tensor)
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _explain_s(folder: Path) -> tuple[float, int, str, float]:
    """Median seconds of one explanation, its calls and method, and its peak MiB."""
    bundle = read_bundle(folder)
    runner = ModelRunner(bundle, choose_runtime(), num_threads=1, interpreters=1, queue_limit=4)
    runner.load()
    assert bundle.sample is not None
    body: dict[str, Any] = {"input": bundle.sample.input, "dtype": "int8", "budget": 5000}
    try:
        times, answer = [], {}
        for _ in range(ROUNDS):
            t = time.perf_counter()
            answer = explain_blocking(runner, body)
            times.append(time.perf_counter() - t)
        tracemalloc.start()  # apart from the timed rounds: it slows every allocation
        try:
            explain_blocking(runner, body)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    finally:
        runner.close()
    return statistics.median(times), int(answer["calls"]), str(answer["method"]), peak


def run(root: Path) -> list[Result]:
    results = []
    for folder in SHIPPED_MODELS:
        name = read_bundle(folder).manifest.name
        invoke = _bare_invoke_s(folder)
        took, calls, method, peak = _explain_s(folder)
        results.append(
            Result(
                f"explain {name}, one input ({method})",
                took * 1000,
                invoke * calls * 1000,
                "ms",
                f"raw = bare invoke {invoke * 1e6:.1f} us x {calls} calls; "
                f"peak allocations {peak:.2f} MiB",
            )
        )
    return results
