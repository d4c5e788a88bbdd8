"""Explanations that mean something, on the real interpreter and the shipped models,
through the code behind both explain routes (edge/inference/explaining.py) with the
label explained the model's own answer, as a request without `target` gets it:

- surface-defect: synthetic surfaces (as scripts/train_models.py draws them) with a spot
  or a scratch at a known place; occlusion's top patch must overlap the defect in at
  least 80 % of 200 images (all of them counted);
- vibration-anomaly: a running machine's window with bearing-fault bursts (as the
  training data draws them) injected into one axis only; that axis must get the largest
  share in at least 80 % of 200 windows (all of them counted, whatever the answer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pytest

from edge.inference.explaining import explain_blocking
from edge.inference.runner import ModelRunner
from edge.inference.runtime import choose_runtime
from edge.inference.tensors import Prepared
from outpost.explain import BudgetError
from outpost.modelbundle import read_bundle
from tests.support import SHIPPED_MODELS

SIDE = 96
CASES = 200


def _runner(name: str) -> ModelRunner:
    """The shipped model `name`, loaded as the agent loads it."""
    (folder,) = [f for f in SHIPPED_MODELS if f.parent.name == name]
    loaded = ModelRunner(
        read_bundle(folder), choose_runtime(), num_threads=1, interpreters=1, queue_limit=4
    )
    loaded.load()
    return loaded


@pytest.fixture(params=[f.parent.name for f in SHIPPED_MODELS])
def runner(request: pytest.FixtureRequest) -> Iterator[ModelRunner]:
    loaded = _runner(request.param)
    yield loaded
    loaded.close()


def _surface(rng: np.random.Generator, kind: str) -> tuple[Any, Any]:
    """A brushed-metal surface with a `kind` defect; the image and the defect's mask."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    img = rng.uniform(0.35, 0.65) + rng.normal(0, rng.uniform(0.01, 0.04), SIDE)[:, None]
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), (SIDE, SIDE))
    if kind == "spot":
        cx, cy = rng.uniform(15, 81, 2)
        r = rng.uniform(5, 11)
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        img = img + rng.choice([-1, 1]) * rng.uniform(0.15, 0.4) * blob
        mask = blob > 0.3
    else:  # scratch
        angle = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(25, 71, 2)
        half = rng.uniform(15, 40)
        dx, dy = np.cos(angle), np.sin(angle)
        along = (xx - cx) * dx + (yy - cy) * dy
        across = np.abs(-(xx - cx) * dy + (yy - cy) * dx)
        mask = (np.abs(along) < half) & (across < 1.2)
        img = img + np.where(mask, rng.choice([-1, 1]) * rng.uniform(0.15, 0.4), 0)
    return np.clip(img, 0, 1)[:, :, None].astype(np.float32), mask


def _faulty_window(rng: np.random.Generator, axis: int) -> Any:
    """A running machine's window with bearing-fault bursts in `axis` only."""
    t = np.arange(128) / 1000.0
    f0 = rng.uniform(20, 45)
    phase = rng.uniform(0, 2 * np.pi, 3)
    window = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * f0 * t[:, None] + phase)
    window += rng.normal(0, 0.1, (128, 3))
    rate, resonance, amp = f0 * 3.5, rng.uniform(150, 350), rng.uniform(0.8, 1.5)
    for hit in np.arange(rng.uniform(0, 1 / rate), t[-1], 1 / rate):
        after = np.clip(t - hit, 0, None) * (t >= hit)
        burst = amp * np.exp(-after * 60) * np.sin(2 * np.pi * resonance * after)
        window[:, axis] += burst * (t >= hit)
    return window.astype(np.float32)


def test_batches_give_what_one_input_at_a_time_gives(runner: ModelRunner) -> None:
    spec = runner.manifest.input
    inputs = np.random.default_rng(1).integers(-128, 128, (37, *spec.shape[1:]), dtype=np.int8)
    one_by_one = [runner.run_blocking(Prepared(x[None], 0), 0).raw for x in inputs]
    with runner.batches(16) as run:  # 16, 16 and 5 (padded)
        batched = run(inputs)
    assert batched.shape == (37, len(runner.manifest.labels))
    assert batched.tolist() == one_by_one


def test_a_request_over_its_budget_makes_no_interpreter(
    runner: ModelRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = []
    monkeypatch.setattr(runner, "batches", lambda size: made.append(size))
    shape = runner.manifest.input.shape
    body = {"input": np.zeros(shape).tolist(), "budget": 2}
    with pytest.raises(BudgetError, match=r"needs \d+ model calls, over the budget of 2"):
        explain_blocking(runner, body)
    assert made == []


def test_the_top_patch_overlaps_the_defect() -> None:
    runner = _runner("surface-defect")
    rng = np.random.default_rng(20261204)
    hits = answered = 0
    try:
        for i in range(CASES):
            kind = "spot" if i % 2 else "scratch"
            image, mask = _surface(rng, kind)
            body = {"input": image[None].tolist(), "patch": 16, "stride": 8, "budget": 400}
            found = explain_blocking(runner, body)
            top = found["top"]
            hits += bool(mask[top["row"] : top["row"] + 16, top["col"] : top["col"] + 16].any())
            answered += found["label"] == kind
    finally:
        runner.close()
    print(f"surface-defect: top patch on the defect in {hits} of {CASES}")
    print(f"  (the model answered the defect drawn for {answered})")
    assert hits >= 0.8 * CASES, hits


def test_the_faulty_axis_gets_the_largest_share() -> None:
    runner = _runner("vibration-anomaly")
    rng = np.random.default_rng(5)
    hits = fixed = faults = 0
    try:
        for i in range(CASES):
            axis = i % 3
            body: dict[str, Any] = {"input": [_faulty_window(rng, axis).tolist()], "window": 16}
            found = explain_blocking(runner, body)
            hits += int(np.argmax(found["channels"])) == axis
            faults += found["label"] != "normal"
            # For the record: toward bearing_fault whatever the answer. A window the
            # model reads as looseness holds no bearing_fault score to take away or keep,
            # and its shares are noise: that figure says more of the model than of this.
            toward = explain_blocking(runner, {**body, "target": "bearing_fault"})
            fixed += int(np.argmax(toward["channels"])) == axis
    finally:
        runner.close()
    print(f"vibration-anomaly: the faulty axis had the largest share in {hits} of {CASES}")
    print(f"  (the model answered a fault for {faults}; toward bearing_fault always: {fixed})")
    assert hits >= 0.8 * CASES, hits


def test_a_model_may_name_its_own_baseline(runner: ModelRunner) -> None:
    """The manifest's explain_baseline takes the place of the input kind's: the hidden
    parts of an image become white (1.0), not its mean; the answer names what was used."""
    shape = runner.manifest.input.shape
    value = (np.random.default_rng(4).random(shape, np.float32) * 0.5).tolist()
    body = {"input": value, "budget": 5000}
    mean = explain_blocking(runner, dict(body))
    runner.manifest = msgspec.structs.replace(runner.manifest, explain_baseline=1.0)
    white = explain_blocking(runner, dict(body))

    assert white["baseline"] == 1.0
    image = len(shape) == 4  # its mean, as quantized; else 0
    assert mean["baseline"] == (pytest.approx(float(np.mean(value)), abs=0.01) if image else 0.0)
    assert white["attribution"] != mean["attribution"]
