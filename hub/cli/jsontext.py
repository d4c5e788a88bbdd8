"""JSON an operator gives a command (a task file, --input, a policy file), read as JSON
is written: Python's reader takes NaN, Infinity and 1e400 (as inf), which the hub's
strict reader then refused with "request body is not JSON", naming neither the file
nor the value."""

from __future__ import annotations

import json
import math
from typing import Any


def parse(text: str, where: str) -> Any:
    """The JSON value in `text`; ValueError naming `where` and what is wrong."""
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except ValueError as exc:  # JSONDecodeError is one
        raise ValueError(f"{where} is not JSON: {exc}") from None
    except RecursionError:  # Python's reader recurses once per level of nesting
        raise ValueError(f"{where} is not JSON this reader takes: nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value
