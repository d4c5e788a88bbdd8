"""Open-file limits: each connected device holds one socket in the managed Mosquitto,
which inherits the hub's limits, so the soft limit caps the fleet.

systemd (and most shells) start programs with a soft limit of 1,024 and a far higher
hard limit; an unprivileged process may raise its soft limit up to the hard one, so the
hub does, before it starts its broker.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Files the hub process and its broker need besides device sockets: the database and its
# WAL, logs, the hub's own MQTT session, web clients (capped per address), models being
# uploaded or served, Mosquitto's persistence and listeners.
RESERVED_FILES = 256
# Below this many device connections the limit is worth a warning: fewer than the
# fleets the documentation measures one hub against.
WARN_BELOW_DEVICES = 4000


@dataclass(frozen=True)
class FileLimit:
    """The soft limit before and after raising it, and the hard limit."""

    before: int
    soft: int
    hard: int

    @property
    def max_connections(self) -> int:
        """Connections the broker may accept within the limit, leaving the reserve."""
        return max(1, self.soft - RESERVED_FILES)


def raise_open_files() -> FileLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it); warn when
    the result still caps the fleet below what the documentation promises."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = before
    wanted = hard if hard != resource.RLIM_INFINITY else max(before, 1 << 20)
    if wanted > before:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:  # a container may refuse: keep what we have
            logger.warning("could not raise the open-file limit from %d: %s", before, exc)
    limit = FileLimit(before=before, soft=soft, hard=hard)
    if limit.max_connections < WARN_BELOW_DEVICES:
        logger.warning(
            "the open-file limit (soft %d, hard %d) lets the broker take only %d devices; "
            "raise it (LimitNOFILE= in the service unit, or ulimit -Hn) to at least %d",
            limit.soft,
            hard,
            limit.max_connections,
            WARN_BELOW_DEVICES + RESERVED_FILES,
        )
    elif soft != before:
        logger.info("open-file limit raised from %d to %d", before, soft)
    return limit
