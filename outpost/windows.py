"""Sync windows: local times of day, ``HH:MM-HH:MM``, in which a device may upload."""

from __future__ import annotations

import re

_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
Window = tuple[int, int]  # minutes after local midnight: [start, end)


def parse_windows(texts: list[str]) -> list[Window]:
    """Parse ``HH:MM-HH:MM`` windows; one that wraps midnight (23:00-02:00) is allowed."""
    windows = []
    for text in texts:
        match = _WINDOW.match(text)
        if not match:
            raise ValueError(f"sync window {text!r} is not HH:MM-HH:MM")
        h1, m1, h2, m2 = map(int, match.groups())
        if (h1, m1) == (h2, m2):
            raise ValueError(f"sync window {text!r} is empty")
        windows.append((h1 * 60 + m1, h2 * 60 + m2))
    return windows
