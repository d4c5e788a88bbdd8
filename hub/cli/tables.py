"""Tables and times as the CLI prints them: columns padded to their widest cell, times
local and relative where that reads better."""

from __future__ import annotations

import time
from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Rows under a header, each column as wide as its widest cell."""
    every = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in every
    )


def ago(at: float | None, now: float | None = None) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`; `never` for None."""
    if at is None:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - at)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def when(at: float | None) -> str:
    """A local date and time, `-` for None."""
    if at is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):  # past what the platform's clock shows
        return f"{at:.0f} (epoch s)"


def labels(values: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def counts(by_state: dict[str, int], none: str = "-") -> str:
    """How many devices are in each state: "2 active, 1 waiting" (`none` for none)."""
    return ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()) if n) or none
