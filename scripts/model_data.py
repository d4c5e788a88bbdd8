"""The synthetic data the shipped models and the benchmarks' model are trained on, made
from a seed: vibration windows, surface images and colour patterns, each with its labels.

Apart from train_models.py (which needs TensorFlow) because the demo and the tests make
inputs with it too, with numpy alone.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------- vibration windows

FS_HZ = 1000.0  # accelerometer sampling rate
WINDOW = 128  # samples per window (0.128 s)
VIBRATION_LABELS = ["normal", "imbalance", "looseness", "bearing_fault"]


def vibration_windows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` three-axis acceleration windows (g) of a rotating machine, with their labels.

    normal: a weak running-speed (1x) tone and noise; imbalance: a strong 1x tone on the
    radial axes, 90 degrees apart; looseness: harmonics 2x to 4x, clipped on one side;
    bearing_fault: decaying resonance bursts repeating at the outer-race fault rate.
    """
    t = np.arange(WINDOW) / FS_HZ
    x = np.empty((n, WINDOW, 3), np.float32)
    y = rng.integers(0, len(VIBRATION_LABELS), n)
    for i in range(n):
        f0 = rng.uniform(20, 45)  # shaft speed, Hz
        phase = rng.uniform(0, 2 * np.pi, 3)
        noise = rng.uniform(0.05, 0.25)
        base = rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * f0 * t[:, None] + phase)
        signal = base + rng.normal(0, noise, (WINDOW, 3))
        kind = VIBRATION_LABELS[y[i]]
        if kind == "imbalance":
            amp = rng.uniform(0.2, 1.3)
            radial = np.stack(
                [np.sin(2 * np.pi * f0 * t + phase[0]), np.cos(2 * np.pi * f0 * t + phase[0])],
                axis=1,
            )
            signal[:, :2] += amp * radial
            signal[:, 2] += 0.1 * amp * np.sin(2 * np.pi * f0 * t + phase[2])
        elif kind == "looseness":
            for harmonic in (2, 3, 4):
                amp = rng.uniform(0.06, 0.45)
                signal += amp * np.sin(2 * np.pi * harmonic * f0 * t[:, None] + phase)
            signal = np.minimum(signal, rng.uniform(0.3, 0.6))  # the part hits its stop
        elif kind == "bearing_fault":
            rate = f0 * rng.uniform(3.0, 4.0)  # outer-race fault frequency
            resonance = rng.uniform(150, 350)
            amp = rng.uniform(0.12, 1.5)
            start = rng.uniform(0, 1 / rate)
            for hit in np.arange(start, t[-1], 1 / rate):
                after = np.clip(t - hit, 0, None) * (t >= hit)
                burst = amp * np.exp(-after * 60) * np.sin(2 * np.pi * resonance * after)
                signal += (burst * (t >= hit))[:, None] * rng.uniform(0.5, 1.0, 3)
        x[i] = signal * rng.uniform(0.8, 1.25)  # sensor gain and mounting vary
    return x, y


# ---------------------------------------------------------------- surface images

SIDE = 96
SURFACE_LABELS = ["ok", "scratch", "spot", "crack"]


def surface_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` 96x96 grayscale images (0..1) of brushed metal, with their labels.

    ok: the bare surface (lighting gradient, brushing streaks, sensor noise); scratch: a
    thin straight line at any angle; spot: a soft round stain, dark or bright; crack: a
    dark jagged path.
    """
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    x = np.empty((n, SIDE, SIDE, 1), np.float32)
    y = rng.integers(0, len(SURFACE_LABELS), n)
    for i in range(n):
        level = rng.uniform(0.35, 0.65)
        gx, gy = rng.uniform(-0.15, 0.15, 2)
        img = level + gx * (xx / SIDE - 0.5) + gy * (yy / SIDE - 0.5)
        streaks = rng.normal(0, rng.uniform(0.01, 0.04), SIDE).astype(np.float32)
        img += streaks[:, None] if rng.random() < 0.5 else streaks[None, :]
        img += rng.normal(0, rng.uniform(0.01, 0.07), (SIDE, SIDE))
        kind = SURFACE_LABELS[y[i]]
        if kind == "scratch":
            angle = rng.uniform(0, np.pi)
            cx, cy = rng.uniform(25, 71, 2)
            half = rng.uniform(15, 40)
            dx, dy = np.cos(angle), np.sin(angle)
            along = (xx - cx) * dx + (yy - cy) * dy
            across = np.abs(-(xx - cx) * dy + (yy - cy) * dx)
            mask = (np.abs(along) < half) & (across < rng.uniform(0.6, 1.4))
            img[mask] += rng.choice([-1, 1]) * rng.uniform(0.05, 0.4)
        elif kind == "spot":
            cx, cy = rng.uniform(15, 81, 2)
            r = rng.uniform(4, 11)
            blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
            img += rng.choice([-1, 1]) * rng.uniform(0.05, 0.4) * blob
        elif kind == "crack":
            px, py = rng.uniform(10, 86, 2)
            heading = rng.uniform(0, 2 * np.pi)
            depth = rng.uniform(0.06, 0.4)
            for _ in range(int(rng.integers(35, 70))):
                heading += rng.normal(0, 0.6)
                px = float(np.clip(px + 1.5 * np.cos(heading), 1, SIDE - 2))
                py = float(np.clip(py + 1.5 * np.sin(heading), 1, SIDE - 2))
                img[int(py), int(px)] -= depth
                img[int(py) + rng.integers(0, 2), int(px) + rng.integers(0, 2)] -= depth / 2
        x[i, :, :, 0] = np.clip(img, 0, 1)
    return x, y


# ---------------------------------------------------------------- colour patterns

PATTERN_LABELS = ["plain", "stripes", "checks", "rings"]


def pattern_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` 96x96 RGB images (0..1) of two random colours mixed by a pattern, with labels.

    plain: a smooth gradient between the colours; stripes: parallel bands at any angle;
    checks: a checkerboard at any angle; rings: concentric circles around any centre.
    Every image has its own colours, scale and sensor noise.
    """
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    x = np.empty((n, SIDE, SIDE, 3), np.float32)
    y = rng.integers(0, len(PATTERN_LABELS), n)
    for i in range(n):
        a, b = rng.uniform(0, 1, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        u = (xx - SIDE / 2) * np.cos(angle) + (yy - SIDE / 2) * np.sin(angle)
        v = -(xx - SIDE / 2) * np.sin(angle) + (yy - SIDE / 2) * np.cos(angle)
        period = rng.uniform(8, 24)
        phase = rng.uniform(0, 2 * np.pi)
        kind = PATTERN_LABELS[y[i]]
        if kind == "plain":
            mix = 0.5 + u / SIDE * rng.uniform(0.3, 1.0)
        elif kind == "stripes":
            mix = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + phase)
        elif kind == "checks":
            cells = np.sin(2 * np.pi * u / period + phase) * np.sin(2 * np.pi * v / period)
            mix = (cells > 0).astype(np.float32)
        else:
            cx, cy = rng.uniform(16, 80, 2)
            r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
            mix = 0.5 + 0.5 * np.sin(2 * np.pi * r / period + phase)
        img = a + (b - a) * mix[..., None]
        img += rng.normal(0, rng.uniform(0.01, 0.08), (SIDE, SIDE, 3))
        x[i] = np.clip(img, 0, 1)
    return x, y
