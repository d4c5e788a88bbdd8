"""Fleet-wide counts read at scrape time for the Prometheus gauges (never per device).

Each function runs on the store's worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.store import modelstats
from hub.store.sql import Sql

ROLLOUT_STATES = ("canary", "rolling", "completed", "halted", "superseded")
EXPIRY_WINDOWS = (("1d", 86400.0), ("14d", 14 * 86400.0))
STORE_OVER = 0.8  # a stream fuller than this counts in the store gauge


@dataclass(frozen=True)
class FleetGauges:
    """Counts over the registry, the roll-outs and the devices' latest roll-ups."""

    certificates_expiring: dict[str, int]  # window ("1d", "14d") -> unrevoked devices
    revoked: int
    rollouts: dict[str, int]  # state -> roll-outs
    stores_over: dict[str, int]  # stream -> devices whose fill is over `STORE_OVER`


def read(db: Sql, now: float) -> FleetGauges:
    expiring = {
        name: db.execute(
            """SELECT COUNT(*) FROM devices WHERE revoked_at IS NULL
               AND cert_not_after IS NOT NULL AND cert_not_after <= ?""",
            (now + within,),
        ).fetchone()[0]
        for name, within in EXPIRY_WINDOWS
    }
    (revoked,) = db.execute("SELECT COUNT(*) FROM devices WHERE revoked_at IS NOT NULL").fetchone()
    rollouts = dict.fromkeys(ROLLOUT_STATES, 0)
    for state, n in db.execute("SELECT state, COUNT(*) FROM rollouts GROUP BY state"):
        rollouts[state] = n  # a state the code adds later shows too (a fixed, small set)
    return FleetGauges(
        certificates_expiring=expiring,
        revoked=revoked,
        rollouts=rollouts,
        stores_over=modelstats.stores_over(db, STORE_OVER),
    )
