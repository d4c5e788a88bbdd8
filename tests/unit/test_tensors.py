"""Checking and quantizing a caller's input against the model's int8 input tensor."""

from __future__ import annotations

import numpy as np
import pytest

from edge.inference.tensors import InputError, dequantize, prepare_input
from outpost.modelbundle import TensorSpec

SPEC = TensorSpec(shape=[1, 4, 2], dtype="int8", scale=0.5, zero_point=-3)


def grid(value: float) -> list[list[float]]:
    return [[value, value] for _ in range(4)]


def test_float_input_is_quantized_with_the_models_scale_and_zero_point() -> None:
    prepared = prepare_input([grid(1.0)], "float32", SPEC)

    assert prepared.tensor.dtype == np.int8
    assert prepared.tensor.shape == (1, 4, 2)
    assert (prepared.tensor == 1.0 / 0.5 - 3).all()
    assert prepared.clipped == 0


def test_the_batch_dimension_may_be_left_out() -> None:
    assert prepare_input(grid(0.0), "float32", SPEC).tensor.shape == (1, 4, 2)


def test_values_beyond_the_int8_range_are_clipped_and_counted() -> None:
    values = grid(0.0)
    values[0] = [1000.0, -1000.0]

    prepared = prepare_input(values, "float32", SPEC)

    assert prepared.tensor[0, 0].tolist() == [127, -128]
    assert prepared.clipped == 2


@pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning")
def test_huge_finite_values_are_clipped_not_refused() -> None:
    # 3e38 / 0.5 overflows float32 to infinity on the way: still a value, clipped.
    data = np.array([3e38, -3e38, 0, 0, 0, 0, 0, 1], "<f4").tobytes()

    prepared = prepare_input(data, "float32", SPEC)

    assert prepared.tensor.reshape(-1).tolist() == [127, -128, -3, -3, -3, -3, -3, -1]
    assert prepared.clipped == 2


def test_quantizing_matches_the_formula_on_random_inputs() -> None:
    """round(value / scale) + zero point, clipped, on values in range and beyond."""
    rng = np.random.default_rng(7)
    for spread in (0.1, 10.0, 1000.0):
        for dtype in ("<f4", "<f8"):
            values = rng.normal(0, spread, (1, 4, 2)).astype(dtype)
            want = np.round(values / SPEC.scale) + SPEC.zero_point
            prepared = prepare_input(values.tolist(), "float32", SPEC)

            assert prepared.tensor.tolist() == np.clip(want, -128, 127).astype(np.int8).tolist()
            assert prepared.clipped == int(((want < -128) | (want > 127)).sum())


def test_raw_int8_input_is_taken_as_it_is() -> None:
    values = [[-128, 127], [0, 1], [2, 3], [4, 5]]
    assert prepare_input(values, "int8", SPEC).tensor[0].tolist() == values


@pytest.mark.parametrize(
    ("dtype", "data"),
    [
        ("float32", np.full(8, 2.0, "<f4").tobytes()),
        ("int8", np.full(8, 1, np.int8).tobytes()),
    ],
)
def test_bytes_input_in_c_order(dtype: str, data: bytes) -> None:
    assert (prepare_input(data, dtype, SPEC).tensor == 1).all()


@pytest.mark.parametrize(
    ("value", "dtype", "code", "words"),
    [
        ([[0.0] * 2] * 3, "float32", "bad_shape", "input shape [3, 2] does not match"),
        ([[0.0] * 3] * 4, "float32", "bad_shape", "[1, 4, 2] (or [4, 2] without the batch"),
        ([[0.0, 0.0], [0.0]], "float32", "bad_shape", "not a rectangular array"),
        (b"\x00" * 7, "int8", "bad_shape", "input is 7 bytes; the model takes 8 int8"),
        (b"\x00" * 8, "float32", "bad_shape", "32 bytes"),
        (grid(0.0), "uint8", "bad_dtype", "dtype 'uint8' is not accepted"),
        ([["a", "b"]] * 4, "float32", "bad_dtype", "non-numeric"),
        ([[True, False]] * 4, "float32", "bad_dtype", "true/false"),
        ([[200, 0]] * 4, "int8", "bad_dtype", "the input spans 0..200"),
        ([[0.5, 0]] * 4, "int8", "bad_dtype", "needs integers"),
        ([[float("nan"), 0.0]] * 4, "float32", "bad_input", "NaN"),
        ([[0.0, float("inf")]] * 4, "float32", "bad_input", "infinite"),
        ([[0.0, 0.0]] * 3 + [[-float("inf"), 1e30]], "float32", "bad_input", "infinite"),
        (np.array([0, 0, 0, 0, 0, 0, 0, np.nan], "<f4").tobytes(), "float32", "bad_input", "NaN"),
        ({"x": 1}, "float32", "bad_input", "must be a list of numbers, got dict"),
        (None, "float32", "bad_input", "got null"),
        ([], "int8", "bad_shape", "input holds no numbers (its shape is (0,))"),
        ([[]], "float32", "bad_shape", "input holds no numbers"),
    ],
)
def test_a_bad_input_is_refused_with_a_reason(
    value: object, dtype: str, code: str, words: str
) -> None:
    with pytest.raises(InputError) as caught:
        prepare_input(value, dtype, SPEC)

    assert caught.value.code == code
    assert words in caught.value.message


def test_outputs_are_dequantized() -> None:
    spec = TensorSpec(shape=[1, 3], dtype="int8", scale=1 / 256, zero_point=-128)
    assert dequantize(np.array([-128, 0, 127], np.int8), spec) == [0.0, 0.5, 255 / 256]
