"""Whether an input's shape is a model's input shape: the rule the agent applies to each
inference and the hub to a task at submission, and the words both say it in.

An input comes as nested lists, whose shape is known, or as the tensor's bytes in C
order (`Flat`), whose number of values only is: those fit a shape holding as many."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ITEM_BYTES = {"float32": 4, "int8": 1}  # the input dtypes, and the bytes of one value


@dataclass(frozen=True)
class Flat:
    """An input given as the tensor's bytes: `size` bytes of `dtype` values."""

    size: int
    dtype: str

    @property
    def values(self) -> int:
        return self.size // ITEM_BYTES[self.dtype]


Found = Sequence[int] | Flat


def fits(found: Found, want: Sequence[int]) -> bool:
    """`found` is `want`, or `want` without its leading batch dimension of 1; bytes fit
    when they are exactly `want`'s values."""
    if isinstance(found, Flat):
        return found.size == math.prod(want) * ITEM_BYTES[found.dtype]
    return tuple(found) == tuple(want) or (1, *found) == tuple(want)


def mismatch(found: Found, want: Sequence[int]) -> str:
    if isinstance(found, Flat):
        count = math.prod(want)
        return (
            f"input is {found.size} bytes; the model takes {count} {found.dtype} values "
            f"({count * ITEM_BYTES[found.dtype]} bytes, shape {list(want)})"
        )
    return f"input shape {list(found)} does not match the model's input {list(want)}" + (
        f" (or {list(want[1:])} without the batch dimension)" if want[:1] == (1,) else ""
    )


def described(found: Found) -> str:
    """The input, as a refusal names it: its shape, or its bytes."""
    if isinstance(found, Flat):
        return f"input of {found.size} bytes ({found.values} {found.dtype} values)"
    return f"input shape {list(found)}"
