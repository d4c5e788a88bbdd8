"""The outbox: events for the sinks (hub/sinks), each written in the transaction of the
change it describes, so none is lost when the hub dies right after a change and none is
invented for a change that rolled back. Each sink reads it in id order from its own
cursor (sink_cursors) and delivers at least once.

Ids must grow in commit order, or a sink's cursor could pass an event that commits after
a later-numbered one. SQLite has one writer, so they do. On PostgreSQL several replicas
write at once: a transaction takes the outbox's advisory lock before its first event and
holds it to its end, so the next writer's ids come after its commit. That serialises
event-writing transactions, only in a hub with sinks (`Sql.publishing`).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from hub.store.sql import Sql

TYPE_PREFIX: Final = "org.outpost."
LOCK_KEY: Final = 0x6F7574626F78  # "outbox": the PostgreSQL advisory lock of its writers


@dataclass(frozen=True)
class OutboxEvent:
    """One event as stored."""

    id: int
    at: float
    type: str  # org.outpost.<area>.<what>
    subject: str  # the device id, or "" for a fleet-wide event
    data: dict[str, Any]


@dataclass(frozen=True)
class SinkCursor:
    """Where a sink is, and what it has done (shared by replicas: any can answer)."""

    sink: str
    position: int  # every event up to this id is delivered (or skipped by its filters)
    state: str  # starting, delivering, idle, failing, failed, overflowed
    error: str
    delivered: int
    retried: int
    dead_lettered: int
    overflowed: int
    updated_at: float


def emit(db: Sql, kind: str, subject: str, data: dict[str, Any], at: float) -> None:
    """Write one event (type `org.outpost.<kind>`) if this unit publishes."""
    if db.publishing:
        emit_many(db, [(kind, subject, data, at)])


def emit_many(db: Sql, events: Sequence[tuple[str, str, dict[str, Any], float]]) -> None:
    """Write events (kind, subject, data, at) in order, if this unit publishes."""
    if not db.publishing or not events:
        return
    if db.dialect == "postgresql":
        db.execute("SELECT pg_advisory_xact_lock(?)", (LOCK_KEY,))
    db.executemany(
        "INSERT INTO outbox (at, type, subject, data) VALUES (?, ?, ?, ?)",
        [(at, TYPE_PREFIX + kind, subject, _text(data)) for kind, subject, data, at in events],
    )


def _text(data: dict[str, Any]) -> str:
    try:
        return _JSON.encode(data).decode()
    except (TypeError, ValueError):  # a device's record with keys JSON cannot name
        return _JSON.encode(_jsonable(data)).decode()


def _jsonable(value: Any) -> Any:
    """A msgpack value as JSON can carry it (the slow way, for the rare value that needs
    it): keys as text, bytes as base64 text, non-finite floats as text."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


# msgspec, not json: a record's event is on ingest's path (bytes become base64 text, and
# a non-finite float null, as JSON has neither).
_JSON = msgspec.json.Encoder()


def records(
    device_id: str, stream: str, rows: list[tuple[int, float, bytes]], now: float
) -> list[tuple[str, str, dict[str, Any], float]]:
    """The events of records a device uploaded, as first stored: org.outpost.record.result
    (or .event) with the stream, the record's number, its time and its body."""
    kind = "record.result" if stream == "results" else "record.event"
    out = []
    decode = msgspec.msgpack.decode
    for seq, ts, body in rows:
        try:
            value = decode(body)
        except (ValueError, RecursionError):
            value = base64.b64encode(body).decode()  # checked at intake: not expected
        out.append(
            (kind, device_id, {"stream": stream, "seq": seq, "ts": ts, "record": value}, now)
        )
    return out


def after(db: Sql, position: int, limit: int) -> list[OutboxEvent]:
    """Events after `position`, oldest first."""
    rows = db.execute(
        "SELECT id, at, type, subject, data FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
        (position, limit),
    ).fetchall()
    return [OutboxEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def head(db: Sql) -> tuple[int, float | None]:
    """The newest event's id (0 if none) and the oldest event's time."""
    row = db.execute("SELECT COALESCE(MAX(id), 0), MIN(at) FROM outbox").fetchone()
    return int(row[0]), row[1]


def oldest_after(db: Sql, position: int) -> float | None:
    """The time of the first event after `position` (a sink's lag in seconds)."""
    row = db.execute("SELECT MIN(at) FROM outbox WHERE id > ?", (position,)).fetchone()
    return float(row[0]) if row[0] is not None else None


def count_between(db: Sql, after: int, through: int) -> int:
    """Events with ids in (after, through]: what a lagging sink skips."""
    row = db.execute(
        "SELECT COUNT(*) FROM outbox WHERE id > ? AND id <= ?", (after, through)
    ).fetchone()
    return int(row[0])


def device_labels(db: Sql) -> dict[str, dict[str, str]]:
    """Every device's labels, for sinks' selectors."""
    rows = db.execute("SELECT device_id, labels FROM devices").fetchall()
    return {r[0]: json.loads(r[1]) for r in rows}


def first_at_or_after(db: Sql, at: float) -> int:
    """The id of the first event at or after `at` (for a replay), else past the end."""
    row = db.execute("SELECT MIN(id) FROM outbox WHERE at >= ?", (at,)).fetchone()
    if row[0] is not None:
        return int(row[0])
    return head(db)[0] + 1


def cursors(db: Sql) -> list[SinkCursor]:
    rows = db.execute(
        """SELECT sink, position, state, error, delivered, retried, dead_lettered,
                  overflowed, updated_at FROM sink_cursors ORDER BY sink"""
    ).fetchall()
    return [SinkCursor(*tuple(r)) for r in rows]


def position_of(db: Sql, sink: str) -> int | None:
    """The sink's cursor as stored (a replay may have moved it)."""
    row = db.execute("SELECT position FROM sink_cursors WHERE sink = ?", (sink,)).fetchone()
    return int(row[0]) if row else None


def open_cursor(db: Sql, sink: str, now: float) -> SinkCursor:
    """The sink's cursor; a new sink starts at the outbox's end (it gets what happens from
    now on; `replay` sends it older events)."""
    with db.write():
        db.execute(
            """INSERT INTO sink_cursors (sink, position, state, error, updated_at)
               VALUES (?, (SELECT COALESCE(MAX(id), 0) FROM outbox), 'starting', '', ?)
               ON CONFLICT (sink) DO NOTHING""",
            (sink, now),
        )
        row = db.execute(
            """SELECT sink, position, state, error, delivered, retried, dead_lettered,
                      overflowed, updated_at FROM sink_cursors WHERE sink = ?""",
            (sink,),
        ).fetchone()
    return SinkCursor(*tuple(row))


def advance(db: Sql, sink: str, frm: int, to: int, delivered: int, now: float) -> bool:
    """Move the sink's cursor from `frm` to `to` (delivered events counted); False, and
    nothing changed, if it is no longer at `frm` (a replay moved it meanwhile)."""
    with db.write():
        return (
            db.execute(
                """UPDATE sink_cursors SET position = ?, delivered = delivered + ?,
                       state = 'delivering', error = '', updated_at = ?
                   WHERE sink = ? AND position = ?""",
                (to, delivered, now, sink, frm),
            ).rowcount
            == 1
        )


def set_state(db: Sql, sink: str, state: str, error: str, now: float, *, retried: int = 0) -> None:
    with db.write():
        db.execute(
            """UPDATE sink_cursors SET state = ?, error = ?, retried = retried + ?,
                   updated_at = ? WHERE sink = ?""",
            (state, error[:500], retried, now, sink),
        )


def dead_letter(
    db: Sql,
    sink: str,
    event_id: str,
    event: OutboxEvent,
    body: str,
    reason: str,
    now: float,
    *,
    frm: int,
) -> bool:
    """Keep an event the sink refused for good, and move the cursor past it from `frm`
    (the event before it); False, the cursor left where it is, if it is no longer at
    `frm`: a replay moved it meanwhile, and must not be undone."""
    with db.write():
        db.execute(
            """INSERT INTO sink_dead_letters (sink, event_id, at, type, subject, body, reason)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            (sink, event_id, now, event.type, event.subject, body, reason[:500]),
        )
        db.execute(
            "UPDATE sink_cursors SET dead_lettered = dead_lettered + 1 WHERE sink = ?", (sink,)
        )
        return (
            db.execute(
                """UPDATE sink_cursors SET position = ?, updated_at = ?
                   WHERE sink = ? AND position = ?""",
                (event.id, now, sink, frm),
            ).rowcount
            == 1
        )


def dead_letters(db: Sql, sink: str, *, before: int | None, limit: int) -> list[Any]:
    return db.execute(
        """SELECT id, event_id, at, type, subject, body, reason FROM sink_dead_letters
           WHERE sink = ? AND id < ? ORDER BY id DESC LIMIT ?""",
        (sink, before if before is not None else 2**62, limit),
    ).fetchall()


def skip_to(db: Sql, sink: str, position: int, overflowed: int, now: float) -> None:
    """Move a lagging sink past events it can no longer get (over its bounds), counted."""
    with db.write():
        db.execute(
            """UPDATE sink_cursors SET position = ?, overflowed = overflowed + ?,
                   state = 'overflowed', updated_at = ? WHERE sink = ? AND position < ?""",
            (position, overflowed, now, sink, position),
        )


def rewind(db: Sql, sink: str, at: float, now: float) -> int | None:
    """Send a sink every kept event from `at` on again; the new position, or None if
    there is no such sink. A replay only ever moves the cursor back: from a time after
    the events the sink has yet to get (a time in the future, say), it moved the cursor
    past them, and they were never delivered, nor counted as skipped."""
    with db.write():
        back_to = first_at_or_after(db, at) - 1
        changed = db.execute(
            """UPDATE sink_cursors SET updated_at = ?,
                   position = CASE WHEN position > ? THEN ? ELSE position END
               WHERE sink = ?""",
            (now, back_to, back_to, sink),
        ).rowcount
        return position_of(db, sink) if changed else None


def prune(db: Sql, sinks: Sequence[str], keep_s: float, now: float) -> int:
    """Delete events every configured sink has and that are older than `keep_s` (kept
    that long for replays); with no sink, every event older than that."""
    with db.write():
        if sinks:
            marks = ", ".join("?" * len(sinks))
            (low,) = db.execute(
                f"SELECT MIN(position) FROM sink_cursors WHERE sink IN ({marks})",  # noqa: S608 - placeholders only
                list(sinks),
            ).fetchone()
            low = low or 0
        else:
            low = 2**62
        return db.execute(
            "DELETE FROM outbox WHERE id <= ? AND at < ?", (low, now - keep_s)
        ).rowcount


def prune_dead_letters(db: Sql, keep_s: float, per_sink: int, now: float) -> int:
    """Delete dead letters older than `keep_s`, and all but each sink's newest
    `per_sink`: a receiver that refuses everything must not grow the database forever."""
    with db.write():
        gone = db.execute("DELETE FROM sink_dead_letters WHERE at < ?", (now - keep_s,)).rowcount
        for (sink,) in db.execute("SELECT DISTINCT sink FROM sink_dead_letters").fetchall():
            gone += db.execute(
                """DELETE FROM sink_dead_letters WHERE sink = ? AND id <= (
                       SELECT id FROM sink_dead_letters WHERE sink = ?
                       ORDER BY id DESC LIMIT 1 OFFSET ?)""",
                (sink, sink, per_sink),
            ).rowcount
    return int(gone)
