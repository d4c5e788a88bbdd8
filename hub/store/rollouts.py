"""Roll-outs of the models the hub holds (catalog.py), and of agent releases (named
`AGENT`; agentrollouts.py says what a device is given): which devices get a version, in
which stage, and what each device reports.

A roll-out targets the devices its selector matches when it is created. The canary
devices are released at once; the rest only when every canary device reports the model
active. A canary that fails halts the roll-out (the rest are never released). What a
device should run is, for each model name, the version of the newest roll-out that
released it.

Each function runs on the store's worker thread as one unit of work.

How a roll-out moves on (rolloutprogress.py) and what devices report (rolloutreports.py)
are modules of their own; the names the store calls as `rollouts.*` are re-exported here.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field

from hub.store import agentrollouts
from hub.store.catalog import get_model
from hub.store.devices import Device
from hub.store.rolloutprogress import Advanced, advance, announce, take_over
from hub.store.rolloutreports import (
    drop_device,
    reconcile_inventory,
    record_state,
    withdraw_device,
)
from hub.store.sql import Row, Sql, chunked, marks
from outpost.agentrelease import ROLLOUT_NAME as AGENT
from outpost.agentrelease import ReleaseFileError, version_order

__all__ = [
    "Advanced",
    "Rollout",
    "RolloutDevice",
    "RolloutRefusedError",
    "announce",
    "create_rollout",
    "desired_releases",
    "desired_releases_of",
    "drop_device",
    "get_rollout",
    "given_to",
    "halt",
    "list_rollouts",
    "reconcile_inventory",
    "record_state",
    "withdraw_device",
]

# The releases a device is given travel in one MQTT message: their sum is bounded.
DEVICE_RELEASES_MAX_BYTES = 200 * 1024


class RolloutRefusedError(ValueError):
    """A roll-out cannot be created; the message says why."""


@dataclass(frozen=True)
class RolloutDevice:
    device_id: str
    stage: str  # canary | rest
    # waiting | released | downloading | blocked | active | failed | rolled_back |
    # superseded | withdrawn (revoked) | shadowing: rolloutprogress.py says which end
    state: str
    detail: str
    released_at: float | None
    updated_at: float


@dataclass(frozen=True)
class Rollout:
    id: int
    name: str
    version: str
    selector: dict[str, str]
    canary_share: float
    state: str  # shadow | canary | rolling | completed | halted | stopped | superseded
    reason: str
    created_at: float
    created_by: str
    updated_at: float
    devices: list[RolloutDevice]  # empty as listed (`list_rollouts`): `counts` says
    mode: str = "staged"  # or shadow: judged first on a candidate run beside the live one
    criteria: dict[str, float] | None = None  # a shadow roll-out's (shadows.py)
    counts: dict[str, int] = field(default_factory=dict)  # devices by state


def create_rollout(
    db: Sql,
    *,
    name: str,
    version: str,
    selector: dict[str, str],
    canary_share: float,
    by: str,
    now: float,
    mode: str = "staged",
    criteria: dict[str, float] | None = None,
) -> Rollout:
    """Create a roll-out and release its canary devices (`RolloutRefusedError` if the
    model is unknown or the selector matches no device). Roll-outs of the same model
    still in progress no longer release the devices this one targets.

    A shadow roll-out (`mode` shadow) releases nothing yet: its devices run the version
    in shadow until shadows.py judges it on `criteria`."""
    shadow = mode == "shadow"
    if shadow and name == AGENT:
        raise RolloutRefusedError("an agent release cannot run in shadow")
    with db.write():
        document = _release_document(db, name, version)
        rows = db.execute("SELECT * FROM devices WHERE revoked_at IS NULL").fetchall()
        targets = [
            d
            for d in map(Device.from_row, rows)
            if all(d.labels.get(k) == v for k, v in selector.items())
        ]
        if not targets:
            raise RolloutRefusedError(f"the selector {selector} matches no enrolled device")
        left_out = agentrollouts.unfit(db, version, targets) if name == AGENT else {}
        if left_out:  # never part of it: said when it starts (the sinks' event)
            targets = [d for d in targets if d.device_id not in left_out]
            if not targets:
                raise RolloutRefusedError(
                    f"no device the selector {selector} matches can take agent {version}: "
                    + _said(left_out)
                )
        for d in targets:
            if name == AGENT:
                break  # an agent release travels alone, on down/agent
            total = _offer_bytes(db, d.device_id, name, shadow=shadow) + len(document)
            if total > DEVICE_RELEASES_MAX_BYTES:
                raise RolloutRefusedError(
                    f"{d.device_id} would hold {total} bytes of releases and shadows, over "
                    f"{DEVICE_RELEASES_MAX_BYTES} (they travel in one message): use "
                    "smaller samples"
                )
        # An agent takes only a newer version: a device that runs this one or a newer
        # one would never report on it, and hold the roll-out up for ever. Its row ends
        # at once (active, or superseded), in the rest stage: having never updated, it
        # proves nothing, so the canaries are among the devices that still need it.
        ended = {
            d.device_id: runs
            for d in targets
            if name == AGENT and (runs := _agent_runs(d, version)) is not None
        }
        # Canaries: online devices first (they can answer soon), then by id, so the
        # choice is predictable.
        targets.sort(key=lambda d: (d.device_id in ended, not d.online, d.device_id))
        needing = len(targets) - len(ended)
        canaries = max(1, math.ceil(canary_share * needing)) if needing else 0
        (rollout_id,) = db.execute(
            """INSERT INTO rollouts (name, version, selector, canary_share, state,
                   created_at, created_by, updated_at, mode, criteria)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
            (
                name,
                version,
                json.dumps(selector, sort_keys=True),
                canary_share,
                "shadow" if shadow else "canary",
                now,
                by,
                now,
                mode,
                json.dumps(criteria or {}, sort_keys=True),
            ),
        ).fetchone()
        older = (
            []  # a shadow takes no device from anyone until it is promoted
            if shadow
            else take_over(db, rollout_id, name, [d.device_id for d in targets], now)
        )
        for i, device in enumerate(targets):
            canary = i < canaries
            released = canary and not shadow
            state = "shadowing" if shadow else "released" if released else "waiting"
            detail = ""
            if device.device_id in ended:
                state, detail = ended[device.device_id]
                released = state == "active"
            db.execute(
                """INSERT INTO rollout_devices (rollout_id, device_id, stage, state, detail,
                       released_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                (
                    rollout_id,
                    device.device_id,
                    "canary" if canary else "rest",
                    state,
                    detail,
                    now if released else None,
                    now,
                ),
            )
        for old in older:
            advance(db, old, now)
        announce(db, rollout_id, "started", f"left out: {_said(left_out)}" if left_out else "", now)
        if name == AGENT:
            advance(db, rollout_id, now)  # every device may run the version already
    rollout = get_rollout(db, rollout_id)
    assert rollout is not None
    return rollout


def _agent_runs(device: Device, version: str) -> tuple[str, str] | None:
    """A device's row of an agent roll-out of `version`, when its agent (as its last
    hello named it) runs that version (active) or a newer one (superseded); else None."""
    if not device.agent_version:
        return None
    try:
        running = version_order(device.agent_version)
    except ReleaseFileError:  # a version pip could not read: its hello is the judge
        return None
    wanted = version_order(version)
    if running == wanted:
        return "active", "runs it already"
    if running > wanted:
        return "superseded", f"runs {device.agent_version}, newer"
    return None


def _said(why: dict[str, str], most: int = 5) -> str:
    """Devices and why, the first `most` of them."""
    shown = "; ".join(f"{d} ({reason})" for d, reason in sorted(why.items())[:most])
    return shown + (f"; and {len(why) - most} more" if len(why) > most else "")


def _offer_bytes(db: Sql, device_id: str, name: str, *, shadow: bool) -> int:
    """The bytes of the signed documents the device's offer holds beside a new one of
    model `name`: every release (but `name`'s, which a staged roll-out replaces; a shadow
    runs beside it) and every shadow but `name`'s (one per model)."""
    releases = [r["document"] for r in _desired(db, device_id) if shadow or r["name"] != name]
    shadows = db.execute(
        """SELECT m.document FROM rollouts r
           JOIN rollout_devices d ON d.rollout_id = r.id
           JOIN models m ON m.name = r.name AND m.version = r.version
           WHERE d.device_id = ? AND r.state = 'shadow' AND r.name != ?""",
        (device_id, name),
    ).fetchall()
    return sum(len(d) for d in releases) + sum(len(r["document"]) for r in shadows)


def _release_document(db: Sql, name: str, version: str) -> bytes:
    """The signed release a roll-out of (name, version) gives devices; refused if the
    hub holds none: a model's, or the agent's (name `AGENT`)."""
    if name == AGENT:
        row = db.execute(
            "SELECT document FROM agent_releases WHERE version = ?", (version,)
        ).fetchone()
        if row is None:
            raise RolloutRefusedError(f"no agent release {version} was uploaded")
        return bytes(row["document"])
    model = get_model(db, name, version)
    if model is None:
        raise RolloutRefusedError(f"no model {name} {version} was uploaded")
    return model.document


def get_rollout(db: Sql, rollout_id: int) -> Rollout | None:
    row = db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if row is None:
        return None
    devices = [
        RolloutDevice(
            r["device_id"], r["stage"], r["state"], r["detail"], r["released_at"], r["updated_at"]
        )
        for r in db.execute(
            """SELECT * FROM rollout_devices WHERE rollout_id = ?
               ORDER BY stage = 'rest', device_id""",
            (rollout_id,),
        )
    ]
    return _rollout(row, devices)


def list_rollouts(db: Sql, limit: int = 100) -> list[Rollout]:
    """The newest roll-outs, each with its devices counted by state but not listed."""
    rows = db.execute("SELECT * FROM rollouts ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    counts: dict[int, dict[str, int]] = {r["id"]: {} for r in rows}
    if rows:
        for c in db.execute(
            """SELECT rollout_id, state, COUNT(*) AS n FROM rollout_devices
               WHERE rollout_id >= ? GROUP BY rollout_id, state""",
            (rows[-1]["id"],),
        ):
            if c["rollout_id"] in counts:
                counts[c["rollout_id"]][c["state"]] = c["n"]
    return [_rollout(r, [], counts[r["id"]]) for r in rows]


def desired_releases(db: Sql, device_id: str) -> list[tuple[bytes, bytes]]:
    """The signed releases the device should run: per model name, the newest roll-out
    that released it and has not halted (a halted roll-out gives its canaries back the
    version of the roll-out before it, or nothing, which leaves the model as it is)."""
    return [(r["document"], r["signature"]) for r in _desired(db, device_id)]


def desired_releases_of(db: Sql, device_ids: list[str]) -> dict[str, list[tuple[bytes, bytes]]]:
    """`desired_releases` of each device, read in one go (a ramp of hellos asks for many)."""
    return {device_id: desired_releases(db, device_id) for device_id in device_ids}


def _desired(db: Sql, device_id: str) -> list[Row]:
    # Every roll-out that gave the device its release counts (released_at), a superseded
    # one too: after a halt of the newer one, the device goes back to it. Not one whose
    # release failed or rolled back on the device (as agentrollouts.py): the device
    # never retries a failed release, so offered it again it would keep serving what it
    # does and report the failure, rather than the version before.
    return db.execute(
        """SELECT m.name, m.document, m.signature FROM models m
           JOIN rollouts r ON r.name = m.name AND r.version = m.version
           WHERE r.id IN (
               SELECT MAX(r2.id) FROM rollouts r2
               JOIN rollout_devices d ON d.rollout_id = r2.id
               WHERE d.device_id = ? AND d.released_at IS NOT NULL
                 AND d.state NOT IN ('failed', 'rolled_back')
                 AND r2.state NOT IN ('halted', 'shadow')
               GROUP BY r2.name
           )
           ORDER BY m.name""",
        (device_id,),
    ).fetchall()


@dataclass(frozen=True)
class Given:
    """Devices a roll-out ever gave something, so that their retained offers may name it."""

    models: set[str]  # a model release, or a candidate to run in shadow (on down/models)
    agent: set[str]  # an agent release (on down/agent)


def given_to(db: Sql, device_ids: list[str]) -> Given:
    """Which of these devices a roll-out ever gave something. Their offers go out even
    when empty: what the database no longer names (after a halt or a failure, recorded
    by this process or by another one on the database) must leave the broker's retained
    offer too. Others are left alone, most hellos being theirs."""
    given = Given(set(), set())
    for chunk in chunked(sorted(set(device_ids))):
        rows = db.execute(
            """SELECT DISTINCT d.device_id, CASE WHEN r.name = ? THEN 1 ELSE 0 END AS agent
               FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id
               WHERE (d.released_at IS NOT NULL OR r.mode = 'shadow')"""  # noqa: S608 - placeholders only
            f" AND d.device_id IN ({marks(len(chunk))})",
            (AGENT, *chunk),
        ).fetchall()
        for r in rows:
            (given.agent if r["agent"] else given.models).add(r["device_id"])
    return given


def halt(db: Sql, rollout_id: int, reason: str, now: float) -> Advanced | None:
    """Halt a roll-out in progress (canary or rolling) for `reason`; None if there is no
    such roll-out. One that already ended is left as it is (`halted_now` false)."""
    with db.write():
        row = db.execute(
            "SELECT state, reason FROM rollouts WHERE id = ?", (rollout_id,)
        ).fetchone()
        if row is None:
            return None
        if row["state"] not in ("shadow", "canary", "rolling"):
            return Advanced(rollout_id, [], row["state"], row["reason"])
        db.execute(
            "UPDATE rollouts SET state = 'halted', reason = ?, updated_at = ? WHERE id = ?",
            (reason, now, rollout_id),
        )
        announce(db, rollout_id, "halted", reason, now)
    return Advanced(rollout_id, [], "halted", reason, halted_now=True)


def _rollout(
    row: Row, devices: list[RolloutDevice], counts: dict[str, int] | None = None
) -> Rollout:
    return Rollout(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        selector=json.loads(row["selector"]),
        canary_share=row["canary_share"],
        state=row["state"],
        reason=row["reason"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        updated_at=row["updated_at"],
        devices=devices,
        mode=row["mode"],
        criteria=json.loads(row["criteria"] or "{}") or None,
        counts=dict(Counter(d.state for d in devices)) if counts is None else counts,
    )
