"""Policy layers and each device's published and applied policy version.

Layers: `fleet` (one, applies to all), groups (a label selector and a rank; applied in
rank order, then name), and device overrides, merged in that order (`outpost.policy`).
Versions come from one counter that only grows, so a device's version only grows too.

A device's `published` is 0 until its version is sent, then 1; `UNDELIVERABLE` marks a
version the hub cannot send (its signed document would be over what a device reads, or
would not encode): it is not sent, counts as drift, and `Effective.undeliverable` says
why, until a change of layers gives the device a version it can take.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from hub.store import events
from hub.store.sql import Sql, chunked, marks
from outpost import policy

Scope = Literal["fleet", "group", "device"]


@dataclass(frozen=True)
class Layer:
    name: str
    scope: Scope
    selector: dict[str, str]
    device_id: str | None
    rank: int
    document: dict[str, Any]
    updated_at: float
    updated_by: str


@dataclass(frozen=True)
class Effective:
    device_id: str
    version: int  # 0: never published
    document: dict[str, Any]
    layers: list[str]
    applied_version: int
    rejected_version: int
    reason: str
    published: bool
    undeliverable: str  # why the hub cannot send this version ("" when it can)


@dataclass(frozen=True)
class ToPublish:
    device_id: str
    version: int
    document: dict[str, Any]
    undeliverable: str = ""  # not to be sent: why (reported once, with its new version)


UNDELIVERABLE = -1  # device_policy.published of a version the hub cannot send


def put_layer(db: Sql, layer: Layer) -> None:
    with db.write():
        db.execute(
            """INSERT INTO policy_layers (name, scope, selector, device_id, rank, document,
                   updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (name) DO UPDATE SET scope = excluded.scope,
                   selector = excluded.selector, device_id = excluded.device_id,
                   rank = excluded.rank, document = excluded.document,
                   updated_at = excluded.updated_at, updated_by = excluded.updated_by""",
            (
                layer.name,
                layer.scope,
                json.dumps(layer.selector, sort_keys=True),
                layer.device_id,
                layer.rank,
                json.dumps(layer.document, sort_keys=True),
                layer.updated_at,
                layer.updated_by,
            ),
        )


def delete_layer(db: Sql, name: str) -> bool:
    with db.write():
        return db.execute("DELETE FROM policy_layers WHERE name = ?", (name,)).rowcount > 0


def layers(db: Sql) -> list[Layer]:
    return [
        Layer(
            r["name"],
            r["scope"],
            json.loads(r["selector"]),
            r["device_id"],
            r["rank"],
            json.loads(r["document"]),
            r["updated_at"],
            r["updated_by"],
        )
        for r in db.execute("SELECT * FROM policy_layers ORDER BY name").fetchall()
    ]


def resolve(all_layers: list[Layer], device_id: str, labels: dict[str, str]) -> list[Layer]:
    """The layers that apply to a device, in merge order: fleet, groups, device."""
    fleet = [x for x in all_layers if x.scope == "fleet"]
    groups = sorted(
        (
            x
            for x in all_layers
            if x.scope == "group" and all(labels.get(k) == v for k, v in x.selector.items())
        ),
        key=lambda x: (x.rank, x.name),
    )
    own = [x for x in all_layers if x.scope == "device" and x.device_id == device_id]
    return [*fleet, *groups, *own]


def refresh(db: Sql, device_ids: list[str] | None, now: float) -> list[ToPublish]:
    """Recompute effective policies (of `device_ids`, or every device); give a new version
    to each that changed, and return those plus any not yet published.

    The versions come from one counter for the fleet, whose row stays locked until the
    transaction ends: they are taken at once, after every read, so that replicas
    refreshing at the same time (a ramp of hellos on each) wait on each other for the
    writes alone, not for each other's reads one device at a time."""
    out: list[ToPublish] = []
    with db.write():
        every = layers(db)
        held_sql = "SELECT device_id, version, digest, published FROM device_policy"
        # Not revoked devices: they never apply a policy again, and a version given to
        # one would count as drift (and keep its alert firing) for good.
        if device_ids is None:
            rows = db.execute(
                "SELECT device_id, labels FROM devices WHERE revoked_at IS NULL"
            ).fetchall()
            held = {r["device_id"]: r for r in db.execute(held_sql)}
        else:
            rows, held = [], {}
            # PostgreSQL refuses an empty `IN ()`, which no chunk is; once per device.
            for chunk in chunked(sorted(set(device_ids))):
                among = f" WHERE device_id IN ({marks(len(chunk))})"
                rows += db.execute(
                    "SELECT device_id, labels FROM devices"  # noqa: S608 - placeholders only
                    + among
                    + " AND revoked_at IS NULL",
                    chunk,
                ).fetchall()
                held |= {r["device_id"]: r for r in db.execute(held_sql + among, chunk)}
        changed: list[tuple[int, str, str, dict[str, Any], str]] = []  # (place in out, ...)
        for r in rows:
            device_id = r["device_id"]
            chosen = resolve(every, device_id, json.loads(r["labels"]))
            document = policy.overlay(*(x.document for x in chosen))
            digest = _digest(document)
            mine = held.get(device_id)
            if mine is not None and mine["digest"] == digest:
                # An undeliverable one only once it can be sent (a hub that reads larger
                # documents now), not signed again at every hello.
                if mine["published"] == 0 or (
                    mine["published"] == UNDELIVERABLE
                    and not policy.undeliverable(device_id, document)
                ):
                    out.append(ToPublish(device_id, mine["version"], document))
                continue
            why = policy.undeliverable(device_id, document)
            changed.append((len(out), device_id, digest, document, why))
            out.append(ToPublish(device_id, 0, document, why))  # numbered below
        if changed:
            last = _take_versions(db, len(changed))
            first = last - len(changed) + 1
            db.executemany(
                """INSERT INTO device_policy (device_id, version, digest, document, published,
                       issued_at) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (device_id) DO UPDATE SET version = excluded.version,
                       digest = excluded.digest, document = excluded.document,
                       published = excluded.published, issued_at = excluded.issued_at""",
                [
                    (
                        device_id,
                        first + n,
                        digest,
                        json.dumps(document),
                        UNDELIVERABLE if why else 0,
                        now,
                    )
                    for n, (_, device_id, digest, document, why) in enumerate(changed)
                ],
            )
            for n, (place, device_id, _, document, why) in enumerate(changed):
                out[place] = ToPublish(device_id, first + n, document, why)
    return out


def _digest(document: dict[str, Any]) -> str:
    """`policy.digest`, or for a document that does not encode (a layer stored before
    layers were checked for it), one of its JSON text: refreshing the rest of the fleet
    must not fail on it."""
    try:
        return policy.digest(document)
    except OverflowError:
        text = json.dumps(document, sort_keys=True)
        return "json:" + hashlib.sha256(text.encode()).hexdigest()


def undeliverable_with(db: Sql, layer: Layer) -> tuple[str, str] | None:
    """A device whose policy, were `layer` written (in place of the layer of its name),
    could not be sent to it, and why; None when every device it applies to can take
    theirs. A layer that applies to none now is measured on its own."""
    with db.snapshot():
        every = [x for x in layers(db) if x.name != layer.name] + [layer]
        devices = db.execute(
            "SELECT device_id, labels FROM devices WHERE revoked_at IS NULL"
        ).fetchall()
    applied = False
    for r in devices:
        chosen = resolve(every, r["device_id"], json.loads(r["labels"]))
        if all(x is not layer for x in chosen):
            continue
        applied = True
        document = policy.overlay(*(x.document for x in chosen))
        if why := policy.undeliverable(r["device_id"], document):
            return r["device_id"], why
    if not applied and (why := policy.undeliverable("", layer.document)):
        return "", why
    return None


def mark_published(db: Sql, published: list[tuple[str, int]]) -> list[str]:
    """These (device, version)s went out; return the devices whose version had moved on.

    A newer version made meanwhile may have gone out before this one (two refreshes at
    once, on one replica or two): the broker then keeps the older one, retained. Its
    newer version is marked unsent again, for the caller to send once more, last.
    Not synced to disk: a mark lost in a crash only sends that policy again."""
    behind = []
    with db.soft(), db.write():
        for device_id, version in published:
            if db.execute(
                "UPDATE device_policy SET published = 1 WHERE device_id = ? AND version = ?",
                (device_id, version),
            ).rowcount:
                continue  # the usual case: no read of the version first
            moved_on = db.execute(
                """UPDATE device_policy SET published = 0
                   WHERE device_id = ? AND version > ? AND published <> ?""",
                (device_id, version, UNDELIVERABLE),
            ).rowcount
            if moved_on:
                behind.append(device_id)
    return behind


def report(db: Sql, device_id: str, applied: int, rejected: int, reason: str, now: float) -> None:
    """What the device says it runs (inside the caller's transaction)."""
    reports = Reports(db, [device_id])
    events.add_many(db, reports.add(device_id, applied, rejected, reason, now))
    reports.write()


_REPORTED = """UPDATE device_policy SET
    reason = CASE WHEN ? >= rejected_version THEN ? ELSE reason END,
    applied_version = CASE WHEN ? > applied_version THEN ? ELSE applied_version END,
    rejected_version = CASE WHEN ? > rejected_version THEN ? ELSE rejected_version END
    WHERE device_id = ?"""


class Reports:
    """What devices say they run, for a batch of heartbeats: their rows read in one go
    at the start, each report's news worked out against what the batch has seen so far,
    the rows written in one go at the end (inside the caller's transaction).

    Versions only move forward: a device never applies an older version than it runs,
    so a lower one is a stale heartbeat (QoS 1 redelivers one the hub handled but had
    not acknowledged when it was killed), not news.

    A device that runs a version above what the hub gave it means the hub's database was
    restored from an older backup: the device would refuse every version the counter
    gives until it passed the device's own. So the fleet's counter is moved up to such a
    version (at most `MAX_FLOOR`), and the device's policy is marked changed, for its
    next refresh (its next hello, or any change of policy) to give it a version it takes."""

    def __init__(self, db: Sql, device_ids: Iterable[str]) -> None:
        self._db = db
        self._known: dict[str, tuple[int, int]] = {}
        self._given: dict[str, int] = {}  # the version the hub holds for each
        ids = sorted(set(device_ids))
        for chunk in chunked(ids):
            for row in db.execute(
                "SELECT device_id, applied_version, rejected_version, version "  # noqa: S608 - only placeholders
                f"FROM device_policy WHERE device_id IN ({marks(len(chunk))})",
                chunk,
            ).fetchall():
                self._known[row[0]] = (row[1], row[2])
                self._given[row[0]] = row[3]
        self._updates: list[tuple[object, ...]] = []
        self._highest = 0  # of the versions reported
        self._ahead: set[str] = set()  # devices running a version the hub never gave

    def add(
        self, device_id: str, applied: int, rejected: int, reason: str, now: float
    ) -> list[tuple[str, float, events.Kind, str]]:
        """Note one report; the events it is news of (device, at, kind, detail)."""
        news: list[tuple[str, float, events.Kind, str]] = []
        known = self._known.get(device_id)
        if known is not None:
            if applied > known[0]:
                news.append((device_id, now, "policy_applied", f"version {applied}"))
            if rejected > known[1]:
                news.append((device_id, now, "policy_refused", f"version {rejected}: {reason}"))
            self._known[device_id] = (max(known[0], applied), max(known[1], rejected))
        self._updates.append((rejected, reason, applied, applied, rejected, rejected, device_id))
        if applied > self._given.get(device_id, applied):
            self._ahead.add(device_id)
            if applied <= MAX_FLOOR:  # a device's word, bounded: see MAX_FLOOR
                self._highest = max(self._highest, applied)
        return news

    def write(self) -> None:
        self._db.executemany(_REPORTED, self._updates)
        self._updates = []
        if self._ahead:  # else applied <= given <= counter: nothing to read
            if self._highest and _counter(self._db) < self._highest:
                self._db.execute(
                    "UPDATE policy_seq SET value = ? WHERE value < ?",
                    (self._highest, self._highest),
                )
            self._db.executemany(
                "UPDATE device_policy SET digest = '', published = 0 WHERE device_id = ?",
                [(device_id,) for device_id in sorted(self._ahead)],
            )
            self._ahead = set()


def effective(db: Sql, device_id: str) -> Effective | None:
    device = db.execute("SELECT labels FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    if device is None:
        return None
    chosen = resolve(layers(db), device_id, json.loads(device["labels"]))
    row = db.execute("SELECT * FROM device_policy WHERE device_id = ?", (device_id,)).fetchone()
    undeliverable = ""
    if row is not None and row["published"] == UNDELIVERABLE:
        undeliverable = (
            policy.undeliverable(device_id, json.loads(row["document"]))
            or "not sent yet"  # it fits since (a later release): its next refresh sends it
        )
    return Effective(
        device_id=device_id,
        version=row["version"] if row else 0,
        document=policy.overlay(*(x.document for x in chosen)),
        layers=[x.name for x in chosen],
        applied_version=row["applied_version"] if row else 0,
        rejected_version=row["rejected_version"] if row else 0,
        reason=row["reason"] if row else "",
        published=bool(row and row["published"] == 1),
        undeliverable=undeliverable,
    )


def drift(db: Sql) -> int:
    """Devices (not revoked) whose applied version lags the one the hub published, or
    the one it could not send them."""
    (n,) = db.execute(
        """SELECT COUNT(*) FROM device_policy p JOIN devices d ON d.device_id = p.device_id
           WHERE p.published <> 0 AND p.applied_version < p.version
             AND d.revoked_at IS NULL"""
    ).fetchone()
    return int(n)


# The highest version a device's report may move the fleet's counter to. A device's
# word is not proof (one reporting 2**63 - 1 left no version to give, and every refresh
# failed for the whole fleet); bounded so, the counter keeps room for ever, and every
# version stays exact for JSON readers.
MAX_FLOOR = 2**53


def _counter(db: Sql) -> int:
    (value,) = db.execute("SELECT value FROM policy_seq").fetchone()
    return int(value)


def _take_versions(db: Sql, count: int) -> int:
    """Take `count` new policy versions for the fleet; return the last of them."""
    (value,) = db.execute(
        "UPDATE policy_seq SET value = value + ? RETURNING value", (count,)
    ).fetchone()
    return int(value)
