"""What devices report about the releases they were given, applied to the roll-outs
that gave them: a release's state, the inventory a hello carries, and a device leaving
(revoked).

Apart from rollouts.py because this is the devices' side, fed by the MQTT intake in
batches, where rollouts.py answers the operator's API; both move roll-outs on with
rolloutprogress.py.
"""

from __future__ import annotations

from hub.store import events
from hub.store.rolloutprogress import TERMINAL, Advanced, advance
from hub.store.sql import Sql, marks


def record_state(
    db: Sql,
    device_id: str,
    name: str,
    version: str,
    state: str,
    detail: str,
    now: float,
    *,
    final: bool = True,
) -> list[Advanced]:
    """Apply a device's report on a release, then move each roll-out it concerns on. A
    failure the device may get past (`final` false) blocks the device, not the roll-out."""
    if state == "failed" and not final:
        state = "blocked"
    advanced = []
    with db.write():
        _log_model_event(db, device_id, name, version, state, detail, now)
        ids = [
            r["id"]
            for r in db.execute(
                # A withdrawn device's report (sent before it was revoked) changes
                # nothing: it may no longer fail or prove the roll-out.
                """SELECT r.id FROM rollouts r JOIN rollout_devices d ON d.rollout_id = r.id
                   WHERE r.name = ? AND r.version = ? AND d.device_id = ?
                     AND d.state NOT IN ('waiting', 'superseded', 'withdrawn')""",
                (name, version, device_id),
            )
        ]
        for rollout_id in ids:
            db.execute(
                """UPDATE rollout_devices SET state = ?, detail = ?, updated_at = ?
                   WHERE rollout_id = ? AND device_id = ?""",
                (state, detail, now, rollout_id, device_id),
            )
            advanced.append(advance(db, rollout_id, now))
    return advanced


_MODEL_EVENTS: dict[str, events.Kind] = {
    "active": "model_activated",
    "failed": "model_failed",
    "rolled_back": "model_rolled_back",
}


def _log_model_event(
    db: Sql, device_id: str, name: str, version: str, state: str, detail: str, now: float
) -> None:
    """Log a release's state on the device's event log when it changed: a device repeats
    the state of every release it holds after each hello, which is not news."""
    kind = _MODEL_EVENTS.get(state)
    if kind is None:
        return
    release = f"{name} {version}"
    last = db.execute(
        """SELECT kind FROM device_events
           WHERE device_id = ? AND kind IN ('model_activated', 'model_failed',
                                            'model_rolled_back')
             AND (detail = ? OR detail LIKE ?)
           ORDER BY id DESC LIMIT 1""",
        (device_id, release, release + ":%"),
    ).fetchone()
    if last is None or last["kind"] != kind:
        events.add(db, device_id, now, kind, f"{release}: {detail}" if detail else release)


def reconcile_inventory(
    db: Sql, inventories: list[tuple[str, list[tuple[str, str]]]], now: float
) -> list[Advanced]:
    """Each device says it serves these (name, version)s: a roll-out still waiting for its
    report of one (lost with a hub replica that died holding it) takes it as active. One
    transaction for a whole ingest batch of devices: a hello carries its inventory, and
    a ramp of hellos is a ramp of these."""
    advanced: list[Advanced] = []
    with db.write():
        if not db.execute(
            "SELECT 1 FROM rollouts WHERE state IN ('canary', 'rolling') LIMIT 1"
        ).fetchone():
            return advanced  # the usual case: nothing is rolling out
        for device_id, serving in inventories:
            for name, version in serving:
                ids = [
                    r["id"]
                    for r in db.execute(
                        """SELECT r.id FROM rollouts r
                           JOIN rollout_devices d ON d.rollout_id = r.id
                           WHERE r.name = ? AND r.version = ? AND d.device_id = ?
                             AND r.state IN ('canary', 'rolling') AND d.state != 'waiting'"""  # noqa: S608 - placeholders only
                        f" AND d.state NOT IN ({marks(len(TERMINAL))})",
                        (name, version, device_id, *TERMINAL),
                    )
                ]
                for rollout_id in ids:
                    db.execute(
                        """UPDATE rollout_devices SET state = 'active', detail = ?,
                                  updated_at = ?
                           WHERE rollout_id = ? AND device_id = ?""",
                        ("serving, by its inventory", now, rollout_id, device_id),
                    )
                    advanced.append(advance(db, rollout_id, now))
    return advanced


def drop_device(db: Sql, device_id: str, reason: str, now: float) -> list[Advanced]:
    """A device leaves every roll-out in progress (revoked): its open rows end
    `withdrawn` with the reason, so no roll-out waits on it; what each roll-out did then
    is returned. Runs inside the caller's transaction.

    Not `failed`: a device lost or stolen says nothing about the release, and a failed
    canary would halt a healthy roll-out (and give its other canaries back what they ran
    before)."""
    ids = [
        r["rollout_id"]
        for r in db.execute(
            """SELECT d.rollout_id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id
               WHERE d.device_id = ? AND r.state IN ('shadow', 'canary', 'rolling')"""  # noqa: S608 - placeholders only
            f" AND d.state NOT IN ({marks(len(TERMINAL))})",
            (device_id, *TERMINAL),
        )
    ]
    for rollout_id in ids:
        db.execute(
            """UPDATE rollout_devices SET state = 'withdrawn', detail = ?, updated_at = ?
               WHERE rollout_id = ? AND device_id = ?""",
            (reason, now, rollout_id, device_id),
        )
    return [advance(db, rollout_id, now) for rollout_id in ids]


def withdraw_device(db: Sql, device_id: str, reason: str, now: float) -> list[Advanced]:
    """Run `drop_device` as a unit of work of its own."""
    with db.write():
        return drop_device(db, device_id, reason, now)
