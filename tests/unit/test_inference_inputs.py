"""A list input is held against the model's shape along its first elements before numpy
reads it (edge/inference/tensors.py `check_nesting`): an input that cannot fit is refused
without its values being looked at, one that may fit is read as before."""

from __future__ import annotations

import pytest

from edge.inference.tensors import InputError, check_nesting, prepare_input
from outpost.modelbundle import TensorSpec

SPEC = TensorSpec(shape=[1, 128, 3], dtype="int8", scale=0.5, zero_point=0)


class _Unreadable:
    """A value numpy would take as an object (a non-numeric input, were it read)."""


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ([_Unreadable()] * 2_000, "[2000]"),  # 2,000 values for 384
        ([[_Unreadable()] * 3] * 129, "[129, 3]"),
        ([[[_Unreadable()] * 3] * 128] * 2, "[2, 128, 3]"),  # two inputs for one
        ([[]] * 1_000, "[1000, 0]"),  # a thousand empty lists: no more the input
    ],
)
def test_an_input_too_large_for_the_model_is_refused_by_its_shape_unread(
    value: list[object], found: str
) -> None:
    """Before: numpy read every value first (a list of 1.5 million numbers held the
    event loop ~100 ms for an inline model), and such an input was refused for its values
    (bad_dtype, "non-numeric") rather than for its shape."""
    with pytest.raises(InputError) as refused:
        prepare_input(value, "float32", SPEC)
    assert refused.value.code == "bad_shape"
    assert f"input shape {found} does not match the model's input [1, 128, 3]" in str(refused.value)
    assert "(or [128, 3] without the batch dimension)" in str(refused.value)


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        ([[0.0] * 3] * 127, "bad_shape", "input shape [127, 3] does not match"),
        ([[0.0, 0.0], [0.0]], "bad_shape", "not a rectangular array"),
        ([["x"] * 3] * 128, "bad_dtype", "non-numeric"),
        ([], "bad_shape", "input holds no numbers"),
        ({"x": 1}, "bad_input", "must be a list of numbers, got dict"),
    ],
)
def test_an_input_no_larger_than_the_model_s_is_read_and_refused_precisely(
    value: object, code: str, words: str
) -> None:
    check_nesting(value, SPEC)  # left to numpy, which says precisely what is wrong
    with pytest.raises(InputError) as refused:
        prepare_input(value, "float32", SPEC)
    assert refused.value.code == code
    assert words in str(refused.value)


def test_an_input_of_the_model_s_shape_passes_with_or_without_its_batch_dimension() -> None:
    window = [[0.5, -0.5, 1.0]] * 128
    check_nesting(window, SPEC)
    check_nesting([window], SPEC)
    assert prepare_input(window, "float32", SPEC).tensor.tolist() == [[[1, -1, 2]] * 128]
