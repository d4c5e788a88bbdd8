"""Between the caller's numbers and the model's int8 tensors: check, quantize, dequantize.

A caller sends real-world values (`float32`, the default), which are quantized with the
model's own scale and zero point, or the raw quantized tensor (`int8`). Either arrives as
nested lists shaped like the model's input (with or without its batch dimension of 1),
or, over msgpack, as the tensor's bytes in C order (float32 little-endian or int8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from outpost import tensorshape
from outpost.modelbundle import TensorSpec

INPUT_DTYPES = ("float32", "int8")
INT8_MIN, INT8_MAX = -128, 127


class InputError(ValueError):
    """An input does not fit the model; `code` says how (bad_shape, bad_dtype, bad_input)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Prepared:
    """An input ready for the interpreter, and how many values had to be clipped."""

    tensor: np.ndarray
    clipped: int


def prepare_input(value: Any, dtype: str, spec: TensorSpec) -> Prepared:
    """Turn a caller's input into the model's int8 tensor, or say what is wrong with it."""
    if dtype not in INPUT_DTYPES:
        raise InputError(
            "bad_dtype",
            f"dtype {dtype!r} is not accepted: send float32 (real values, quantized with the "
            "model's scale) or int8 (already quantized)",
        )
    want = tuple(spec.shape)
    if isinstance(value, bytes | bytearray | memoryview):
        array = _from_bytes(bytes(value), dtype, want)
    else:
        check_nesting(value, spec)
        array = _from_lists(value, dtype)
    array = _fit_shape(array, want)
    if dtype == "int8":
        return Prepared(array.astype(np.int8), 0)
    return quantize(array, spec)


def check_nesting(value: Any, spec: TensorSpec) -> None:
    """Refuse nested lists that cannot be the model's input, before numpy reads them.

    Only the lengths along the first elements are looked at (value, value[0], ...): a few
    steps whatever the input's size, where numpy takes ~100 ms, holding the GIL, to turn a
    list of 1.5 million numbers into an array, only for its shape to be refused. Those
    lengths are the input's shape if it is rectangular. When they hold no more values than
    the model's input, numpy is left to read it and say precisely what is wrong (ragged,
    empty, not numbers): a few values, or a ragged input's, which the local API's body
    limit bounds."""
    if not isinstance(value, list):
        return  # `prepare_input` says what it is
    nesting: list[int] = []
    while isinstance(value, list):
        nesting.append(len(value))
        if not value:
            break
        value = value[0]
    found, want = tuple(nesting), tuple(spec.shape)
    # An empty level counts as one: a million empty lists are no more the input than a
    # million numbers.
    if (
        found == want
        or (1, *found) == want
        or math.prod(max(n, 1) for n in found) <= math.prod(want)
    ):
        return
    raise InputError("bad_shape", tensorshape.mismatch(found, want))


def quantize(values: np.ndarray, spec: TensorSpec) -> Prepared:
    """Real values to int8 with the tensor's scale and zero point, clipping to its range.

    Few passes over the values in the usual case (every value finite and in range): the
    division, the rounding and the shift in place, then the extremes, which also tell
    whether a NaN or an infinity is there (either makes them non-finite). Only then are
    the values looked at one by one: a huge but finite value also overflows to infinity,
    and is clipped, not refused. Each numpy call costs about a microsecond before its
    work, as much as the small models' whole inference.
    """
    q = np.divide(values, spec.scale)
    np.rint(q, out=q)
    q += spec.zero_point
    low, high = float(q.min(initial=0)), float(q.max(initial=0))
    if not (math.isfinite(low) and math.isfinite(high)) and not np.isfinite(values).all():
        raise InputError("bad_input", "input holds NaN or infinite values")
    if low >= INT8_MIN and high <= INT8_MAX:
        return Prepared(q.astype(np.int8), 0)
    clipped = int(np.count_nonzero((q < INT8_MIN) | (q > INT8_MAX)))
    return Prepared(np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8), clipped)


def dequantize(raw: np.ndarray, spec: TensorSpec) -> list[float]:
    scores: list[float] = ((raw.astype(np.float32) - spec.zero_point) * spec.scale).tolist()
    return scores


def _from_bytes(data: bytes, dtype: str, want: tuple[int, ...]) -> np.ndarray:
    item = np.dtype("<f4") if dtype == "float32" else np.dtype(np.int8)
    found = tensorshape.Flat(len(data), dtype)
    if not tensorshape.fits(found, want):
        raise InputError("bad_shape", tensorshape.mismatch(found, want))
    return np.frombuffer(data, item).reshape(want)


def _from_lists(value: Any, dtype: str) -> np.ndarray:
    if not isinstance(value, list):
        raise InputError("bad_input", f"input must be a list of numbers, got {_kind(value)}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise InputError("bad_shape", f"input is not a rectangular array: {exc}") from exc
    if array.size == 0:  # numpy makes an empty list a float array: said as fractions
        raise InputError("bad_shape", f"input holds no numbers (its shape is {array.shape})")
    kind = array.dtype.kind
    if kind not in "iuf":
        found = "true/false" if kind == "b" else "non-numeric"
        raise InputError("bad_dtype", f"input holds {found} values; only numbers are accepted")
    if dtype == "int8":
        if kind == "f":
            raise InputError("bad_dtype", "dtype int8 needs integers; the input holds fractions")
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        if low < INT8_MIN or high > INT8_MAX:
            raise InputError(
                "bad_dtype",
                f"int8 values must lie in {INT8_MIN}..{INT8_MAX}; the input spans {low}..{high}",
            )
    return array


def _fit_shape(array: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    if array.shape == want:
        return array
    if tensorshape.fits(array.shape, want):  # the batch dimension may be left out
        return array.reshape(want)
    raise InputError("bad_shape", tensorshape.mismatch(array.shape, want))


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
