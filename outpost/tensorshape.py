"""Whether an input's shape is a model's input shape: the rule the agent applies to each
inference and the hub to a task at submission, and the words both say it in."""

from __future__ import annotations

from collections.abc import Sequence


def fits(found: Sequence[int], want: Sequence[int]) -> bool:
    """`found` is `want`, or `want` without its leading batch dimension of 1."""
    return tuple(found) == tuple(want) or (1, *found) == tuple(want)


def mismatch(found: Sequence[int], want: Sequence[int]) -> str:
    return f"input shape {list(found)} does not match the model's input {list(want)}" + (
        f" (or {list(want[1:])} without the batch dimension)" if want[:1] == (1,) else ""
    )
