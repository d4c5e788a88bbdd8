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

Most hellos come from devices no roll-out ever named (a ramp, a reconnect storm): they
have nothing to offer, so they are sorted out first, without the lock, which would
otherwise make every replica's hellos wait on one row. A roll-out that names a device
later asks for its offer after it commits (`ReleasePublisher.request`), so nothing is
missed.
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


def offers_of(
    db: Sql, device_ids: list[str], now: float, always: frozenset[str] = frozenset()
) -> dict[str, Offer]:
    """The offer for each of these devices, numbered where the device checks seals.

    A device no roll-out names gets an empty offer with no number (seq 0), unless it is
    one of `always`: those are numbered even with nothing to offer, as an empty offer
    that replaces a retained one must be sealed for the device to take it."""
    named = _in_rollouts(db, device_ids) | (always & set(device_ids))
    offers = {d: Offer(d, 0, [], []) for d in device_ids}
    if not named:
        return offers
    wanted = sorted(named)
    with db.write():
        sealed = sorted(_sealed(db, wanted))
        numbers: dict[str, int] = {}
        if sealed:
            last = _take_numbers(db, len(sealed), now)
            numbers = dict(zip(sealed, range(last - len(sealed) + 1, last + 1), strict=True))
        releases = desired_releases_of(db, wanted)
        shadows = desired_shadows_of(db, wanted)
    for d in wanted:
        offers[d] = Offer(d, numbers.get(d, 0), releases[d], shadows.get(d, []))
    return offers


def _in_rollouts(db: Sql, device_ids: list[str]) -> set[str]:
    """The devices some roll-out names (released or waiting): only they can have an offer."""
    return _among(db, device_ids, "SELECT DISTINCT device_id FROM rollout_devices WHERE")


def _sealed(db: Sql, device_ids: list[str]) -> set[str]:
    return _among(db, device_ids, "SELECT device_id FROM devices WHERE sealed_offers = 1 AND")


def _among(db: Sql, device_ids: list[str], select: str) -> set[str]:
    """The ids `select` (a fixed query ending in WHERE or AND) finds among `device_ids`,
    asked a chunk at a time (PostgreSQL bounds a statement's parameters)."""
    found: set[str] = set()
    for chunk in chunked(sorted(set(device_ids))):
        rows = db.execute(
            f"{select} device_id IN ({marks(len(chunk))})",
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
