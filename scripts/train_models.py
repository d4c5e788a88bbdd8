"""Train, quantize and package the models that ship with Outpost, and the benchmarks'.

Run with `./scripts/train-models`: it makes a separate venv with TensorFlow (a
development-only extra; nothing else in the project needs it) and runs this script.

Each model is trained on synthetic data made here from a fixed seed, converted with
TensorFlow Lite's converter to full-integer quantization (int8 in, int8 out, calibrated on
a representative dataset), then checked with the LiteRT interpreter the agent uses: its
held-out accuracy goes into the model's manifest, and one confidently classified held-out
example becomes the committed sample with its expected output.

    models/<name>/<version>/model.tflite   the model
    models/<name>/<version>/model.json     manifest: sha256, size, labels, tensors, accuracy
    models/<name>/<version>/sample.json    a sample input and the output it must give

The benchmarks' model (mobilenet-class, a MobileNetV2 at width 0.35 on 96x96x3, ~0.6 MB)
is not shipped: its bundle goes to tests/bench/models/ instead. `--only NAME` builds one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The training data, made from a seed (scripts/model_data.py; the demo and the tests
# import it from there or from here).
from scripts.model_data import (
    PATTERN_LABELS,
    SIDE,
    SURFACE_LABELS,
    VIBRATION_LABELS,
    WINDOW,
    pattern_images,
    surface_images,
    vibration_windows,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
MAX_MODEL_BYTES = 500 * 1024


def vibration_model(tf: Any) -> Any:
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Input((WINDOW, 3)),
            layers.Conv1D(16, 7, strides=2, padding="same", activation="relu"),
            layers.Conv1D(32, 5, strides=2, padding="same", activation="relu"),
            layers.Conv1D(32, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling1D(),
            layers.Dense(32, activation="relu"),
            layers.Dense(len(VIBRATION_LABELS), activation="softmax"),
        ]
    )


def surface_model(tf: Any) -> Any:
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Input((SIDE, SIDE, 1)),
            layers.Conv2D(8, 3, strides=2, padding="same", activation="relu"),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.GlobalMaxPooling2D(),
            layers.Dense(32, activation="relu"),
            layers.Dense(len(SURFACE_LABELS), activation="softmax"),
        ]
    )


def mobilenet_model(tf: Any) -> Any:
    """MobileNetV2 at width 0.35 on 96x96x3, from scratch: a MobileNet-class workload."""
    model = tf.keras.applications.MobileNetV2(
        input_shape=(SIDE, SIDE, 3), alpha=0.35, weights=None, classes=len(PATTERN_LABELS)
    )
    # Keras' MobileNetV2 keeps batch-norm statistics with momentum 0.999, made for long
    # runs: after a few hundred steps they would still be mostly their initial values.
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


# ---------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    description: str
    labels: list[str]
    normal_label: str
    input_description: str
    data: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    build: Callable[[Any], Any]
    train_size: int
    test_size: int
    epochs: int
    sample_label: str
    # Where the bundle goes, under the repository (or --out): the shipped models in
    # models/, the benchmarks' fixtures in tests/bench/models/.
    folder: str = "models"
    max_bytes: int = MAX_MODEL_BYTES


RECIPES = [
    Recipe(
        name="vibration-anomaly",
        version="1.0.0",
        description="Classifies 128-sample, 3-axis accelerometer windows (1 kHz, in g) of a "
        "rotating machine: normal running or one of three faults.",
        labels=VIBRATION_LABELS,
        normal_label="normal",
        input_description="acceleration in g, shape [1, 128, 3]: 128 samples at 1 kHz of "
        "the x, y and z axes",
        data=vibration_windows,
        build=vibration_model,
        train_size=12000,
        test_size=3000,
        epochs=25,
        sample_label="bearing_fault",
    ),
    Recipe(
        name="surface-defect",
        version="1.0.0",
        description="Classifies 96x96 grayscale images of a brushed metal surface: ok or "
        "one of three defects.",
        labels=SURFACE_LABELS,
        normal_label="ok",
        input_description="grayscale pixels from 0 (black) to 1 (white), shape [1, 96, 96, 1]",
        data=surface_images,
        build=surface_model,
        train_size=10000,
        test_size=2000,
        epochs=20,
        sample_label="scratch",
    ),
    # Not shipped: a MobileNet-class workload (~0.6 MB, 96x96x3) for tests/bench.
    Recipe(
        name="mobilenet-class",
        version="1.0.0",
        description="MobileNetV2 (width 0.35) classifying 96x96 RGB images of synthetic "
        "colour patterns: a benchmark fixture for MobileNet-class inference, not a shipped "
        "model.",
        labels=PATTERN_LABELS,
        normal_label="plain",
        input_description="RGB pixels from 0 (dark) to 1 (bright), shape [1, 96, 96, 3]",
        data=pattern_images,
        build=mobilenet_model,
        train_size=6000,
        test_size=1000,
        epochs=8,
        sample_label="checks",
        folder="tests/bench/models",
        max_bytes=1024 * 1024,
    ),
]


def convert(tf: Any, model: Any, calibration: np.ndarray) -> bytes:
    def representative() -> Iterator[list[np.ndarray]]:
        for row in calibration:
            yield [row[None, ...].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def quantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


def evaluate(content: bytes, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """int8 outputs of the converted model for every row of `x`, via LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    scale, zero_point = inp["quantization"]
    outputs = np.empty((len(x), out["shape"][-1]), np.int8)
    for i, row in enumerate(x):
        interpreter.set_tensor(inp["index"], quantize(row[None, ...], scale, zero_point))
        interpreter.invoke()
        outputs[i] = interpreter.get_tensor(out["index"])[0]
    return outputs, inp, out


def tensor_spec(detail: dict[str, Any], description: str) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    return {
        "shape": [int(d) for d in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "scale": float(scale),
        "zero_point": int(zero_point),
        "description": description,
    }


def build(tf: Any, recipe: Recipe, out_root: Path | None, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    x_train, y_train = recipe.data(recipe.train_size, rng)
    x_test, y_test = recipe.data(recipe.test_size, np.random.default_rng(seed + 1))
    tf.keras.utils.set_random_seed(seed)
    model = recipe.build(tf)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train, y_train, epochs=recipe.epochs, batch_size=64, validation_split=0.1, verbose=2
    )
    float_accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    content = convert(tf, model, x_train[:400])
    if len(content) > recipe.max_bytes:
        raise SystemExit(f"{recipe.name}: {len(content)} bytes, over {recipe.max_bytes}")

    outputs, inp, out = evaluate(content, x_test)
    predicted = outputs.argmax(axis=1)
    int8_accuracy = float((predicted == y_test).mean())
    confusion = np.zeros((len(recipe.labels),) * 2, int)
    for truth, guess in zip(y_test, predicted, strict=True):
        confusion[truth, guess] += 1

    # The sample: the held-out example of `sample_label` the int8 model is surest of.
    want = recipe.labels.index(recipe.sample_label)
    candidates = np.flatnonzero((y_test == want) & (predicted == want))
    best = candidates[outputs[candidates, want].argmax()]
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    sample_q = quantize(x_test[best][None, ...], in_scale, in_zero)
    expected_q = outputs[best]

    folder = (out_root or ROOT / recipe.folder) / recipe.name / recipe.version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.tflite").write_bytes(content)
    sample = {
        "input": sample_q.tolist(),
        "input_dtype": "int8",
        "expected": {
            "label": recipe.sample_label,
            "output": expected_q.tolist(),
            "scores": [round((int(q) - out_zero) * out_scale, 6) for q in expected_q],
        },
    }
    manifest = {
        "name": recipe.name,
        "version": recipe.version,
        "description": recipe.description,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "labels": recipe.labels,
        "normal_label": recipe.normal_label,
        "input": tensor_spec(inp, recipe.input_description),
        "output": tensor_spec(out, "class scores (softmax), one per label"),
        "accuracy": {
            "held_out_int8": round(int8_accuracy, 4),
            "held_out_float": round(float_accuracy, 4),
            "held_out_samples": recipe.test_size,
            "confusion": confusion.tolist(),
        },
        "training": {
            "data": "synthetic, scripts/train_models.py",
            "seed": seed,
            "train_samples": recipe.train_size,
            "tensorflow": tf.__version__,
        },
    }
    (folder / "sample.json").write_text(json.dumps(sample, separators=(",", ":")) + "\n")
    (folder / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"{recipe.name} {recipe.version}: {len(content)} bytes, held-out accuracy "
        f"{int8_accuracy:.4f} int8 ({float_accuracy:.4f} float) on {recipe.test_size}",
        flush=True,
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        help="models folder (default: each model's own, models/ or tests/bench/models/)",
    )
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--only", choices=[r.name for r in RECIPES], action="append")
    args = parser.parse_args(argv)
    import tensorflow as tf

    for recipe in RECIPES:
        if args.only and recipe.name not in args.only:
            continue
        build(tf, recipe, args.out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
