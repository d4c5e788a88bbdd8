"""Logging refused device messages without letting a device write the hub's log.

A broken or hostile device can send thousands of bad messages a second. Each one is
counted (`/metrics`), but only the first `per_window` of each device in a window are
logged; at the first refusal after the window, one line says how many were not logged.
The text of each line is already bounded (the wire quotes at most ~100 characters of a
value); the line is cut again here so that no reason can make a long one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_LINE = 600  # characters of a refusal's text in the log
MAX_DEVICES = 10_000  # devices remembered; past this the window starts afresh


@dataclass
class _Window:
    start: float
    logged: int = 0
    quiet: int = 0  # refusals counted but not logged in this window


class RejectionLog:
    """At most `per_window` log lines per device per `window_s` seconds."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_window: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._per_window = per_window
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def refused(self, device: str, topic: str, reason: str, text: str) -> None:
        now = self._clock()
        window = self._windows.get(device)
        if window is None or now - window.start >= self._window_s:
            if window is not None and window.quiet:
                self._logger.warning(
                    "%d more messages from %s were refused in %.0f s and not logged",
                    window.quiet,
                    device,
                    now - window.start,
                )
            if window is None and len(self._windows) >= MAX_DEVICES:
                self._windows.clear()
            window = self._windows[device] = _Window(now)
        if window.logged >= self._per_window:
            window.quiet += 1
            return
        window.logged += 1
        if len(text) > MAX_LINE:
            text = text[: MAX_LINE - 1] + "…"
        more = (
            " (more from it this minute are counted, not logged)"
            if (window.logged == self._per_window)
            else ""
        )
        self._logger.warning("rejected message on %s: %s: %s%s", topic[:200], reason, text, more)
