"""Upload streams at the hub: records kept once each, and a high-water mark per device and
stream that says "everything up to here is held".

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from hub.store.sql import Sql
from outpost import wire

MAX_SEQ = 2**63 - 1  # SQLite's largest integer; the wire contract bounds seqs at it too


@dataclass(frozen=True)
class Upload:
    """One batch a device sent: its stream, the numbers it covers, and its records."""

    device_id: str
    stream: str
    from_seq: int
    to_seq: int
    records: Sequence[tuple[int, float, bytes]]  # (seq, ts, msgpack body), increasing seq

    @classmethod
    def of(cls, device_id: str, body: wire.Records) -> Upload:
        """A device's batch as the wire carries it (MQTT or a courier bundle)."""
        return cls(
            device_id=device_id,
            stream=body.stream,
            from_seq=body.from_seq,
            to_seq=body.to_seq,
            records=list(zip(body.seqs, body.ts, body.bodies, strict=True)),
        )


@dataclass(frozen=True)
class Applied:
    """What became of an upload: the mark after it, whether it was refused as a gap,
    and how many of its records were new."""

    device_id: str
    stream: str
    hwm: int
    gap: bool
    stored: int


@dataclass(frozen=True)
class StoredRecord:
    """A record as the hub holds it."""

    seq: int
    ts: float
    body: Any
    received_at: float


@dataclass(frozen=True)
class StreamCount:
    """How much of a stream the hub holds for a device."""

    stream: str
    records: int
    hwm: int


# Called, inside the transaction, with each upload and the records of it that were new.
OnStored = Callable[[Sql, Upload, list[tuple[int, float, bytes]]], None]


def apply_uploads(
    db: Sql,
    uploads: list[Upload],
    now: float,
    on_stored: OnStored | None = None,
    finish: Callable[[Sql], None] | None = None,
) -> list[Applied]:
    """Store every upload and move its mark, all in one transaction, in the given order.

    Durable on return (the store runs `synchronous=FULL`): an ack sent after this can
    never name a record a power cut takes back. `on_stored` sees each new record once,
    in the same transaction (so what it derives is exactly-once too); `finish` runs last,
    in it too.
    """
    applied = []
    with db.write():
        for upload in uploads:
            applied.append(_apply(db, upload, now, on_stored))
        if finish is not None:
            finish(db)
    return applied


def _apply(db: Sql, upload: Upload, now: float, on_stored: OnStored | None) -> Applied:
    key = (upload.device_id, upload.stream)
    row = db.execute(
        "SELECT hwm FROM stream_marks WHERE device_id = ? AND stream = ?", key
    ).fetchone()
    hwm: int = row[0] if row else 0
    if upload.from_seq > hwm + 1:
        # Storing it would leave a hole the mark could never move across.
        return Applied(*key, hwm=hwm, gap=True, stored=0)
    new = [r for r in upload.records if r[0] > hwm]  # at or below the mark: a replay
    rows = [(*key, seq, ts, body, now) for seq, ts, body in new]  # stored as it came
    # DO NOTHING only as a guard: nothing above the mark can be stored yet.
    stored = db.executemany(
        """INSERT INTO records (device_id, stream, seq, ts, body, received_at)
           VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
        rows,
    )
    if on_stored is not None and new:
        on_stored(db, upload, new)
    if upload.to_seq > hwm:
        hwm = upload.to_seq  # past the numbers without a record too: evicted on the device
        db.execute(
            """INSERT INTO stream_marks (device_id, stream, hwm) VALUES (?, ?, ?)
               ON CONFLICT (device_id, stream) DO UPDATE SET hwm = excluded.hwm""",
            (*key, hwm),
        )
    return Applied(*key, hwm=hwm, gap=False, stored=max(stored, 0))


def marks(db: Sql, device_ids: Iterable[str]) -> dict[tuple[str, str], int]:
    """The mark of every stream the hub holds something of, for each of `device_ids`."""
    found: dict[tuple[str, str], int] = {}
    for device_id in sorted(set(device_ids)):
        rows = db.execute(
            "SELECT stream, hwm FROM stream_marks WHERE device_id = ?", (device_id,)
        ).fetchall()
        found.update({(device_id, r[0]): r[1] for r in rows})
    return found


def page(db: Sql, device_id: str, stream: str, after: int, limit: int) -> list[StoredRecord]:
    """Records of one device and stream with seq above `after`, in seq order (keyset)."""
    rows = db.execute(
        """SELECT seq, ts, body, received_at FROM records
           WHERE device_id = ? AND stream = ? AND seq > ? ORDER BY seq LIMIT ?""",
        (device_id, stream, after, limit),
    ).fetchall()
    return [StoredRecord(r[0], r[1], msgspec.msgpack.decode(r[2]), r[3]) for r in rows]


def counts(db: Sql, device_id: str) -> list[StreamCount]:
    """Records held and mark, per stream the hub holds anything of for the device."""
    held = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT stream, COUNT(*) FROM records WHERE device_id = ? GROUP BY stream",
            (device_id,),
        ).fetchall()
    }
    hwms = {
        r[0]: r[1]
        for r in db.execute(
            "SELECT stream, hwm FROM stream_marks WHERE device_id = ?", (device_id,)
        ).fetchall()
    }
    return [
        StreamCount(stream, held.get(stream, 0), hwms.get(stream, 0))
        for stream in sorted(held.keys() | hwms.keys())
    ]
