"""How a roll-out moves on: from its canaries to the rest of its devices (`rolling`), to
`completed` when every device has ended, or `halted` when a canary fails; and telling
the sinks each move (org.outpost.rollout.<state>).

Apart from rollouts.py (creating, halting and reading roll-outs) and rolloutreports.py
(what devices report) because both move roll-outs on with the same rules, held here
once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hub.store import outbox
from hub.store.sql import Sql, chunked, marks

IN_PROGRESS = ("canary", "rolling")
# A device's row ends `active`, `failed`, `rolled_back`, `superseded` (a newer roll-out
# of the model took the device before this one released it) or `withdrawn` (the device
# was revoked: it says nothing about the release, so it neither fails the roll-out nor
# proves it). `blocked`: the device cannot take the model yet (its policy does not allow
# it), and may later.
TERMINAL = ("active", "failed", "rolled_back", "superseded", "withdrawn")
FAILED = ("failed", "rolled_back")
# Ended without a word on the release: a canary stage goes on without such a canary.
GONE = ("superseded", "withdrawn")
UNRELEASED = ("waiting", "superseded")
# Not ended yet: what a newer roll-out of the model takes from an older one.
OPEN = ("waiting", "released", "downloading", "blocked")


@dataclass(frozen=True)
class Advanced:
    """What a roll-out did after a report: devices newly released, and its state."""

    rollout_id: int
    released: list[str]
    state: str
    reason: str
    halted_now: bool = False  # this report halted it


def advance(db: Sql, rollout_id: int, now: float) -> Advanced:
    """Move the roll-out on as far as its devices' rows allow; runs inside the
    caller's transaction."""
    row = db.execute("SELECT state, reason FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    state, reason = row["state"], row["reason"]
    devices = db.execute(
        "SELECT device_id, stage, state, detail FROM rollout_devices WHERE rollout_id = ?",
        (rollout_id,),
    ).fetchall()
    released: list[str] = []
    if state == "canary":
        canary = [d for d in devices if d["stage"] == "canary"]
        failed = [d for d in canary if d["state"] in FAILED]
        if failed:
            d = failed[0]
            state = "halted"
            reason = f"canary {d['device_id']} {d['state'].replace('_', ' ')}: {d['detail']}"
        elif canary and all(d["state"] in GONE for d in canary):
            # Nothing proved the version yet: the next device waiting becomes the canary.
            waiting = sorted(
                d["device_id"] for d in devices if d["stage"] == "rest" and d["state"] == "waiting"
            )
            if waiting:
                released = waiting[:1]
                db.execute(
                    """UPDATE rollout_devices SET stage = 'canary', state = 'released',
                           released_at = ?, updated_at = ?
                       WHERE rollout_id = ? AND device_id = ?""",
                    (now, now, rollout_id, released[0]),
                )
            elif all(d["state"] == "superseded" for d in devices):
                state = "superseded"
                reason = "every device was taken by a newer roll-out of the model"
            else:
                state = "rolling"  # no device is left to prove it on: it ends below
        elif all(d["state"] in ("active", *GONE) for d in canary):
            released = [
                d["device_id"] for d in devices if d["stage"] == "rest" and d["state"] == "waiting"
            ]
            db.execute(
                """UPDATE rollout_devices SET state = 'released', released_at = ?,
                       updated_at = ? WHERE rollout_id = ? AND stage = 'rest'
                       AND state = 'waiting'""",
                (now, now, rollout_id),
            )
            state = "rolling"
    if state == "rolling":
        latest = {
            r["device_id"]: r["state"]
            for r in db.execute(
                "SELECT device_id, state FROM rollout_devices WHERE rollout_id = ?",
                (rollout_id,),
            )
        }
        if all(s in TERMINAL for s in latest.values()):
            failures = sum(s in FAILED for s in latest.values())
            state = "completed"
            # Without failures, what it said stands (how a shadow roll-out was promoted).
            reason = f"{failures} of {len(latest)} devices failed" if failures else reason
    if (state, reason) != (row["state"], row["reason"]):
        db.execute(
            "UPDATE rollouts SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
            (state, reason, now, rollout_id),
        )
        if state != row["state"]:
            announce(db, rollout_id, state, reason, now)
    halted_now = state == "halted" and row["state"] != "halted"
    return Advanced(rollout_id, released, state, reason, halted_now)


def moved_since(db: Sql, since: float) -> list[tuple[int, str, float, bool]]:
    """What roll-outs did to devices after `since` (wall clock), whichever process did it
    (a CLI beside the running hub, another replica): (roll-out, device, when, halted) for
    each device released since, and for each device released by a roll-out halted since
    (`halted`: to be sent what replaces the release, even an empty offer). Only roll-outs
    in progress or changed since are read: a few, however long the fleet's history."""
    rows = db.execute(
        """SELECT r.id, d.device_id, d.released_at, r.updated_at, r.state = 'halted' AS halted
           FROM rollouts r JOIN rollout_devices d ON d.rollout_id = r.id
           WHERE (r.state IN ('canary', 'rolling', 'shadow') OR r.updated_at > ?)
             AND d.released_at IS NOT NULL
             AND (d.released_at > ? OR (r.state = 'halted' AND r.updated_at > ?))""",
        (since, since, since),
    ).fetchall()
    return [
        (
            r["id"],
            r["device_id"],
            r["updated_at"] if r["halted"] else r["released_at"],
            bool(r["halted"]),
        )
        for r in rows
    ]


def take_over(db: Sql, rollout_id: int, name: str, device_ids: list[str], now: float) -> list[int]:
    """Roll-out `rollout_id` takes these devices from the older roll-outs of model `name`
    still in progress: their rows not ended yet (waiting, or released and not yet
    active) end `superseded`, since each device is given only its newest roll-out's
    release and would never report on the older one. The older roll-outs' ids, for the
    caller to `advance` once its own rows are in."""
    older = [
        r["id"]
        for r in db.execute(
            """SELECT id FROM rollouts
               WHERE name = ? AND id != ? AND state IN ('canary', 'rolling')""",
            (name, rollout_id),
        )
    ]
    for old in older:
        for chunk in chunked(device_ids):
            db.execute(
                "UPDATE rollout_devices SET state = 'superseded', detail = ?, updated_at = ?"  # noqa: S608 - placeholders only
                f" WHERE rollout_id = ? AND state IN ({marks(len(OPEN))})"
                f" AND device_id IN ({marks(len(chunk))})",
                (f"taken by roll-out {rollout_id}", now, old, *OPEN, *chunk),
            )
    return older


def announce(db: Sql, rollout_id: int, state: str, reason: str, now: float) -> None:
    """Tell the sinks a roll-out moved (org.outpost.rollout.<state>): started, rolling (its
    canaries are healthy), completed, halted or superseded."""
    if not db.publishing:
        return
    row = db.execute(
        "SELECT name, version, selector, canary_share FROM rollouts WHERE id = ?", (rollout_id,)
    ).fetchone()
    counts: dict[str, int] = {}
    for (device_state,) in db.execute(
        "SELECT state FROM rollout_devices WHERE rollout_id = ?", (rollout_id,)
    ):
        counts[device_state] = counts.get(device_state, 0) + 1
    data = {
        "rollout_id": rollout_id,
        "model": row["name"],
        "version": row["version"],
        "selector": json.loads(row["selector"]),
        "canary_share": row["canary_share"],
        "state": state,
        "reason": reason,
        "devices": counts,
    }
    outbox.emit(db, f"rollout.{state}", "", data, now)
