"""Which agent release each device should run: the release of the newest agent roll-out
(rollouts named `AGENT`, see rollouts.py) that released the device and has not halted.

A halted agent roll-out gives its devices nothing new: those not yet released never
get it, and a device that installed it keeps it (it came up and reported on it, which
is the health check an agent release has to pass; its launcher rolls back one that does
not). The agent refuses a version that is not newer than the one it runs, so the hub
never has to say "go back".

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

from hub.store.sql import Sql
from outpost.agentrelease import ROLLOUT_NAME as AGENT


def desired_agent_of(db: Sql, device_ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
    """The signed agent release (document, signature) each device should run, for the
    devices that have one: not one that failed or rolled back on it (offered again, it
    would be installed again, or switched to without a selfcheck, and fail again)."""
    out: dict[str, tuple[bytes, bytes]] = {}
    for device_id in device_ids:
        row = db.execute(
            """SELECT a.document, a.signature FROM agent_releases a
               JOIN rollouts r ON r.version = a.version
               WHERE r.id = (
                   SELECT MAX(r2.id) FROM rollouts r2
                   JOIN rollout_devices d ON d.rollout_id = r2.id
                   WHERE r2.name = ? AND d.device_id = ?
                     AND d.released_at IS NOT NULL
                     AND d.state NOT IN ('failed', 'rolled_back')
                     AND r2.state != 'halted'
               )""",
            (AGENT, device_id),
        ).fetchone()
        if row is not None:
            out[device_id] = (bytes(row["document"]), bytes(row["signature"]))
    return out
