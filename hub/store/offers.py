"""What each device is offered of model releases, numbered for the hub's seal.

An offer is everything a device should run and shadow (`rollouts.desired_releases`,
`shadows.desired_shadows_of`). For a device that checks seals (its hello said so) the
offer also gets a number from `offer_seq`, one counter for the fleet, which the hub
signs into the offer's seal (outpost/offerseal.py); the device takes no offer numbered
below the last it took, so neither a replay nor two replicas' offers crossing on the
broker can take it back to an older one.

The numbers are taken first, in the transaction that then reads what to offer: the
counter's row stays locked until the commit, so an offer read later always carries a
higher number (on PostgreSQL each later statement sees what committed before it).
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.store.rollouts import desired_releases_of
from hub.store.shadows import desired_shadows_of
from hub.store.sql import Sql, chunked, marks

Signed = tuple[bytes, bytes]  # a release document and its signature


@dataclass(frozen=True)
class Offer:
    device_id: str
    seq: int  # its place among the fleet's offers; 0: the device checks no seal
    releases: list[Signed]
    shadows: list[Signed]


def offers_of(db: Sql, device_ids: list[str], now: float) -> dict[str, Offer]:
    """The offer for each of these devices, numbered where the device checks seals."""
    with db.write():
        sealed = sorted(_sealed(db, device_ids))
        numbers: dict[str, int] = {}
        if sealed:
            last = _take_numbers(db, len(sealed), now)
            numbers = dict(zip(sealed, range(last - len(sealed) + 1, last + 1), strict=True))
        releases = desired_releases_of(db, device_ids)
        shadows = desired_shadows_of(db, device_ids)
    return {d: Offer(d, numbers.get(d, 0), releases[d], shadows.get(d, [])) for d in device_ids}


def _sealed(db: Sql, device_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunked(sorted(set(device_ids))):
        rows = db.execute(
            "SELECT device_id FROM devices WHERE sealed_offers = 1"  # noqa: S608 - placeholders only
            f" AND device_id IN ({marks(len(chunk))})",
            tuple(chunk),
        ).fetchall()
        found.update(r["device_id"] for r in rows)
    return found


def _take_numbers(db: Sql, count: int, now: float) -> int:
    """Take `count` offer numbers; return the last. Each is above every number taken
    before and above the clock's milliseconds, so a database restored from an older
    backup still numbers past what its devices took (unless the clock went back)."""
    floor = int(now * 1000)
    (value,) = db.execute(
        """UPDATE offer_seq SET value = CASE WHEN value > ? THEN value ELSE ? END + ?
           RETURNING value""",
        (floor, floor, count),
    ).fetchone()
    return int(value)
