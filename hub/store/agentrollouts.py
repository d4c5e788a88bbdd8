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

import json
from collections.abc import Iterable

from hub.store.devices import Device
from hub.store.sql import Sql
from outpost.agentrelease import ROLLOUT_NAME as AGENT
from outpost.agentrelease import ReleaseFileError, version_order


def unfit(db: Sql, version: str, devices: Iterable[Device]) -> dict[str, str]:
    """The devices that cannot take agent release `version`, each with why: another
    machine than its platforms, or an agent older than its `min_agent_version` (as their
    last hellos said). Such a device refuses it for good, which halted the roll-out when
    it was a canary; a device whose hello said neither is given its chance."""
    row = db.execute("SELECT manifest FROM agent_releases WHERE version = ?", (version,)).fetchone()
    if row is None:
        return {}
    manifest = json.loads(row["manifest"])
    platforms: list[str] = manifest.get("platforms", [])
    oldest: str = manifest.get("min_agent_version", "")
    out = {}
    for d in devices:
        arch = str(d.capabilities.get("arch", ""))
        if arch and platforms and arch not in platforms:
            out[d.device_id] = f"its machine is {arch}; the release is for {', '.join(platforms)}"
        elif oldest and d.agent_version and _older(d.agent_version, oldest):
            out[d.device_id] = f"runs agent {d.agent_version}; it updates {oldest} or newer"
    return out


def _older(running: str, oldest: str) -> bool:
    try:
        return version_order(running) < version_order(oldest)
    except ReleaseFileError:  # a version pip cannot read: its own check is the judge
        return False


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
