"""Logging set-up for the daemons: one line per event, to stderr (journald adds time)."""

from __future__ import annotations

import logging
import sys


def configure(level: str, *, with_time: bool = True) -> None:
    """Send log records at `level` and above to stderr."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if with_time:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # paho logs every packet at DEBUG; keep it at INFO unless asked for explicitly.
    logging.getLogger("mqtt").setLevel(max(logging.INFO, logging.getLogger().level))
