"""Explanations that mean something, on the real interpreter and the shipped models:

- surface-defect: synthetic surfaces (as scripts/train_models.py draws them) with a spot
  or a scratch at a known place; occlusion's top patch must overlap the defect in at
  least 80 % of 200 images;
- vibration-anomaly: a running machine's window with bearing-fault bursts (as the
  training data draws them) injected into one axis only; that axis must get the largest
  share in at least 80 % of 200 windows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.runtime import choose_runtime
from outpost import explain
from outpost.modelbundle import read_bundle
from tests.support import SHIPPED_MODELS

SIDE = 96
CASES = 200


def _predictor(folder: Path) -> tuple[Callable[[Any], Any], list[str]]:
    """Real-valued batch -> scores, through the LiteRT interpreter on the int8 model."""
    bundle = read_bundle(folder)
    m = bundle.manifest
    interpreter = choose_runtime().interpreter(str(bundle.model_path), 1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()

    def predict(batch: Any) -> Any:
        q = np.clip(np.round(batch / m.input.scale) + m.input.zero_point, -128, 127)
        scores = []
        for one in q.astype(np.int8):
            interpreter.set_tensor(inp["index"], one[None])
            interpreter.invoke()
            raw = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float32)
            scores.append((raw - m.output.zero_point) * m.output.scale)
        return np.array(scores)

    return predict, m.labels


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


def test_the_top_patch_overlaps_the_defect() -> None:
    predict, labels = _predictor(SHIPPED_MODELS[1])
    assert labels[:4] == ["ok", "scratch", "spot", "crack"]
    rng = np.random.default_rng(20261204)
    hits = 0
    for i in range(CASES):
        kind = "spot" if i % 2 else "scratch"
        image, mask = _surface(rng, kind)
        found = explain.occlusion_image(
            predict, image, labels.index(kind), patch=16, stride=8,
            baseline=float(image.mean()), budget=400,
        )  # fmt: skip
        r, c = found.top
        hits += bool(mask[r : r + 16, c : c + 16].any())
    print(f"surface-defect: top patch on the defect in {hits} of {CASES}")
    assert hits >= 0.8 * CASES, hits


def test_the_faulty_axis_gets_the_largest_share() -> None:
    predict, labels = _predictor(SHIPPED_MODELS[0])
    rng = np.random.default_rng(5)
    t = np.arange(128) / 1000.0
    hits = 0
    for i in range(CASES):
        axis = i % 3
        f0 = rng.uniform(20, 45)
        phase = rng.uniform(0, 2 * np.pi, 3)
        window = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * f0 * t[:, None] + phase)
        window += rng.normal(0, 0.1, (128, 3))
        rate, resonance, amp = f0 * 3.5, rng.uniform(150, 350), rng.uniform(0.8, 1.5)
        for hit in np.arange(rng.uniform(0, 1 / rate), t[-1], 1 / rate):
            after = np.clip(t - hit, 0, None) * (t >= hit)
            burst = amp * np.exp(-after * 60) * np.sin(2 * np.pi * resonance * after)
            window[:, axis] += burst * (t >= hit)
        found = explain.occlusion_series(
            predict, window.astype(np.float32), labels.index("bearing_fault"), window=16,
            baseline=np.zeros(3), budget=100,
        )  # fmt: skip
        assert found.shares is not None
        hits += int(np.argmax(found.shares)) == axis
    print(f"vibration-anomaly: the faulty axis had the largest share in {hits} of {CASES}")
    assert hits >= 0.8 * CASES, hits
