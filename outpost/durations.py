"""Parse human durations such as ``90s``, ``15m``, ``1h``, ``90d``, and write them back."""

from __future__ import annotations

import argparse
import math
import re

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}  # largest first: `describe` relies on it
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
ACCEPTED = "a number and one unit: s, m, h or d (e.g. 90s, 15m, 1h, 90d; no unit: seconds)"


class DurationError(ValueError, argparse.ArgumentTypeError):
    """A text that is not a positive duration; the message says what is accepted.

    An ArgumentTypeError too, so that `type=durations.parse` in argparse shows this
    message instead of its own "invalid parse value".
    """


def parse(text: str) -> float:
    """Return `text` in seconds; a bare number is seconds. Raise DurationError if malformed."""
    match = _PATTERN.match(text)
    if not match:
        raise DurationError(f"not a duration: {text!r}; use {ACCEPTED}")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise DurationError(f"a duration must be positive and finite, got {text!r}")
    return seconds


def describe(seconds: float) -> str:
    """`seconds` in the largest unit that holds it whole (43200 -> 12h), else in seconds."""
    for unit, size in _UNITS.items():
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
