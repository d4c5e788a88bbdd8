"""The current metric roll-up window, kept across restarts.

The agent writes one roll-up every `metrics_interval`. Were its timer to start afresh with
each process, an agent restarted more often than that (a crash loop, a watchdog, a
flaky power supply) would never write one. So the window's start is kept in a small file
in the data folder, as wall-clock time (the monotonic clock restarts with the boot): a
new process continues the window, and closes it out at once if it is overdue.

No file means no open window: the agent removes it once a graceful stop has written the
last window's roll-up, and a fresh window starts with the next process.

Within a process the window runs on the monotonic clock, so a clock step while the agent
runs moves no roll-up. A start read back from the file is clamped: one in the future (the
clock went back) starts the window now, one older than `MAX_AGE_S` (a clock set years
late, then corrected) is not believed beyond that. Either way the next roll-up is due no
later than one interval from now, and at most one is due at once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from outpost import files

logger = logging.getLogger(__name__)

FORMAT: Final = 1
# Longest window believed from the file: a device may sit switched off for days, but a
# window of years means the clock was wrong when the start was written.
MAX_AGE_S: Final = 7 * 24 * 3600.0


class MetricsWindow:
    """When the window being counted started; `resume` it first (blocking)."""

    def __init__(
        self,
        path: Path,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._wall = wall
        self._monotonic = monotonic
        self._start = monotonic()  # on the monotonic clock
        self._start_wall = wall()  # the same instant, as written to the file

    def resume(self) -> float:
        """Continue the window kept on disk, or start one now and keep it (blocking: reads
        and may write the file). Returns how long the window has been open."""
        wall, mono = self._wall(), self._monotonic()
        kept = self._read()
        start = wall if kept is None else min(max(kept, wall - MAX_AGE_S), wall)
        if kept is not None and start != kept:
            logger.warning(
                "metrics window start %.0f lies %+.0f s from now (the clock changed since "
                "it was written): clamped to %.0f s ago",
                kept,
                kept - wall,
                wall - start,
            )
        age = wall - start
        self._start, self._start_wall = mono - age, start
        if start != kept:  # new, or clamped: a clamped start stays clamped
            self.save()
        return age

    def due_in(self, interval: float) -> float:
        """Seconds until the window's roll-up is due (0 if it is overdue)."""
        return max(0.0, self._start + interval - self._monotonic())

    def close(self) -> float:
        """End the window and start the next one now (in memory: `save` keeps it).
        Returns the ended window's length, seconds."""
        now = self._monotonic()
        period = now - self._start
        self._start, self._start_wall = now, self._wall()
        return period

    def save(self) -> None:
        """Keep the window's start on disk, atomically (blocking). A failing disk is
        logged, not raised: the timer goes on in memory."""
        data = json.dumps({"format": FORMAT, "start": self._start_wall}).encode()
        try:
            files.replace(self._path, data, files.PUBLIC)
        except OSError as exc:
            logger.warning("metrics window not kept in %s: %s", self._path, exc)

    def forget(self) -> None:
        """Remove the file (blocking): the window's roll-up is written and no new window
        is counted (the agent stops). Not synced: should a power cut bring the file back,
        the next start only closes out a window already rolled up (a roll-up with no
        counts), which is harmless."""
        try:
            self._path.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("metrics window %s not removed: %s", self._path, exc)

    def _read(self) -> float | None:
        """The start kept on disk; None if there is none or it is damaged (logged)."""
        try:
            body = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("metrics window %s unreadable, starting afresh: %s", self._path, exc)
            return None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            logger.warning("metrics window %s: unknown format, starting afresh", self._path)
            return None
        start = body.get("start")
        if (
            not isinstance(start, (int, float))
            or isinstance(start, bool)
            or not math.isfinite(start)
        ):
            logger.warning("metrics window %s damaged, starting afresh: %r", self._path, body)
            return None
        return float(start)
