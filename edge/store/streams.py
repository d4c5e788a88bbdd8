"""The upload streams' SQL: append with bounds, read batches, apply acks, roll up metrics.

Every function runs on the store's single writer thread, inside one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from edge.store import sent
from edge.store.cipher import RecordCipher
from edge.store.counters import bump
from edge.store.rollup import rollup
from outpost.schema import INT64_MAX
from outpost.sqlite import Database

logger = logging.getLogger(__name__)

STREAMS = ("results", "events", "metrics")


@dataclass(frozen=True)
class Bounds:
    """Limits of one stream; 0 means no limit of that kind."""

    max_records: int
    max_bytes: int
    max_age_s: float


@dataclass(frozen=True)
class Appended:
    """Sequence numbers given to an append."""

    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class Refused:
    """An append refused because its stream is full; `reason` says so plainly."""

    reason: str


def append(
    db: Database,
    stream: str,
    bodies: Sequence[bytes],
    bounds: Bounds,
    cipher: RecordCipher | None,
    now: float,
) -> Appended | Refused:
    """Number and store `bodies` (packed), or refuse them when a precious stream is full."""
    row = db.execute("SELECT * FROM streams WHERE stream = ?", (stream,)).fetchone()
    size = sum(len(b) for b in bodies)
    if _over(bounds, row["records"] + len(bodies), row["bytes"] + size):
        if stream != "metrics":
            bump(db, f"refused.{stream}", len(bodies))
            return Refused(
                f"the {stream} stream is full ({row['records']} records, {row['bytes']} bytes "
                f"waiting for the hub; limits {bounds.max_records} records, "
                f"{bounds.max_bytes} bytes): refusing new work until it drains"
            )
        if _over(bounds, len(bodies), size):
            # It would not fit in an empty stream: making room would drop every stored
            # metric and still leave the stream over its bounds.
            bump(db, "refused.metrics", len(bodies))
            return Refused(
                f"the metrics append ({len(bodies)} records, {size} bytes) is larger than "
                f"the metrics stream may hold (limits {bounds.max_records} records, "
                f"{bounds.max_bytes} bytes): send it in smaller appends"
            )
        _make_room(db, bounds, len(bodies), size, cipher)
        row = db.execute("SELECT * FROM streams WHERE stream = ?", (stream,)).fetchone()
    first = row["next_seq"]
    rows = []
    for seq, body in enumerate(bodies, start=first):
        stored = cipher.seal(stream, seq, body) if cipher else body
        rows.append((stream, seq, now, stored))
    db.conn.executemany("INSERT INTO records (stream, seq, ts, body) VALUES (?, ?, ?, ?)", rows)
    stored_size = sum(len(r[3]) for r in rows)
    db.execute(
        "UPDATE streams SET next_seq = ?, records = records + ?, bytes = bytes + ? "
        "WHERE stream = ?",
        (first + len(bodies), len(bodies), stored_size, stream),
    )
    return Appended(first, first + len(bodies) - 1)


def _over(bounds: Bounds, records: int, size: int) -> bool:
    return bool(
        (bounds.max_records and records > bounds.max_records)
        or (bounds.max_bytes and size > bounds.max_bytes)
    )


def _make_room(
    db: Database, bounds: Bounds, records: int, size: int, cipher: RecordCipher | None
) -> None:
    """Roll up the oldest metrics not yet handed out for upload, then evict the oldest,
    until `records`/`size` fit (which they do in an empty stream: see `append`)."""
    rollup(db, cipher, after_seq=sent.mark(db, "metrics"))
    row = db.execute("SELECT records, bytes FROM streams WHERE stream = 'metrics'").fetchone()
    while _over(bounds, row["records"] + records, row["bytes"] + size) and row["records"]:
        excess = max(1, row["records"] + records - (bounds.max_records or row["records"]))
        _delete_oldest(db, "metrics", max(excess, row["records"] // 10), "evicted.metrics")
        row = db.execute("SELECT records, bytes FROM streams WHERE stream = 'metrics'").fetchone()


def _delete_oldest(db: Database, stream: str, count: int, counter: str) -> None:
    rows = db.execute(
        "SELECT seq, length(body) AS size FROM records WHERE stream = ? ORDER BY seq LIMIT ?",
        (stream, count),
    ).fetchall()
    if not rows:
        return
    db.execute("DELETE FROM records WHERE stream = ? AND seq <= ?", (stream, rows[-1]["seq"]))
    db.execute(
        "UPDATE streams SET records = records - ?, bytes = bytes - ? WHERE stream = ?",
        (len(rows), sum(r["size"] for r in rows), stream),
    )
    bump(db, counter, len(rows))


def expire(db: Database, bounds: dict[str, Bounds], now: float) -> None:
    """Drop records older than their stream's age limit, counting them as expired.

    By their time, not their number: after the clock stepped back, a record numbered
    later may be the older one, and the fresh records numbered before it stay."""
    for stream, limit in bounds.items():
        if not limit.max_age_s:
            continue
        cutoff = now - limit.max_age_s
        n, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(body)), 0) FROM records"
            " WHERE stream = ? AND ts < ?",
            (stream, cutoff),
        ).fetchone()
        if n:
            db.execute("DELETE FROM records WHERE stream = ? AND ts < ?", (stream, cutoff))
            db.execute(
                "UPDATE streams SET records = records - ?, bytes = bytes - ? WHERE stream = ?",
                (n, size, stream),
            )
            bump(db, f"expired.{stream}", n)


def read_batch(
    db: Database,
    stream: str,
    after_seq: int,
    max_records: int,
    max_bytes: int,
    cipher: RecordCipher | None,
    through_seq: int | None = None,
) -> list[tuple[int, float, bytes]]:
    """The oldest records after `after_seq` (and up to `through_seq`), at most
    `max_records` and about `max_bytes`."""
    # A cursor of plain tuples: a batch is hundreds of rows, each read by position.
    cursor = db.conn.cursor()
    cursor.row_factory = None
    rows: list[tuple[int, float, bytes]] = cursor.execute(
        "SELECT seq, ts, body FROM records WHERE stream = ? AND seq > ? AND seq <= ? "
        "ORDER BY seq LIMIT ?",
        (stream, after_seq, INT64_MAX if through_seq is None else through_seq, max_records),
    ).fetchall()
    out: list[tuple[int, float, bytes]] = []
    size = 0
    damaged: list[int] = []
    for seq, ts, body in rows:
        if cipher is not None:
            try:
                body = cipher.open(stream, seq, body)
            except InvalidTag:
                damaged.append(seq)
                continue
        if out and size + len(body) > max_bytes:
            break
        out.append((seq, ts, body))
        size += len(body)
    if damaged and not out:
        # Nothing here opens: a key that is not this store's (every record would be
        # left out, then deleted at the ack), or damage alone so far. The stream waits.
        raise InvalidTag(f"{stream} {damaged[0]}..{damaged[-1]} does not decrypt")
    for seq in damaged:
        # Beside records that open, it is damage, not the wrong key: left out of the
        # batch, which still covers its number, rather than hold the stream up for good.
        logger.error("%s record %d is damaged (it does not decrypt): left out", stream, seq)
    return out


def acknowledge(db: Database, stream: str, hwm: int, cipher: RecordCipher | None) -> int:
    """Delete what the hub holds (seq <= hwm); return how many records went.

    A mark beyond the last number this store gave means another store used this
    device's identity (a cloned card, a restored backup): deleting up to it would drop
    records the hub never saw, so they are renumbered after it instead, and counted.
    """
    (next_seq,) = db.execute("SELECT next_seq FROM streams WHERE stream = ?", (stream,)).fetchone()
    if hwm >= next_seq:
        (kept,) = db.execute("SELECT COUNT(*) FROM records WHERE stream = ?", (stream,)).fetchone()
        _renumber_after(db, stream, hwm, cipher)
        bump(db, f"renumbered.{stream}", kept)
        logger.warning(
            "the hub holds %s up to %d but this store numbered only up to %d: another "
            "device may be using this identity; %d records renumbered after the hub's mark",
            stream,
            hwm,
            next_seq - 1,
            kept,
        )
        return 0
    row = db.execute(
        "SELECT COUNT(*) AS n, COALESCE(SUM(length(body)), 0) AS size FROM records "
        "WHERE stream = ? AND seq <= ?",
        (stream, hwm),
    ).fetchone()
    db.execute("DELETE FROM records WHERE stream = ? AND seq <= ?", (stream, hwm))
    db.execute(
        "UPDATE streams SET acked_seq = MAX(acked_seq, ?), records = records - ?, "
        "bytes = bytes - ? WHERE stream = ?",
        (hwm, row["n"], row["size"], stream),
    )
    return int(row["n"])


def aligned_streams(db: Database) -> set[str]:
    (value,) = db.execute("SELECT value FROM meta WHERE key = 'aligned'").fetchone()
    return set(filter(None, value.split(",")))


def store_id(db: Database) -> str:
    (value,) = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return str(value)


def adopt_numbering(db: Database, stream: str) -> bool:
    """The hub numbers this stream as this store does (it took this store's records by
    courier bundle while the store was unaligned): aligned as it is, nothing moves.
    False if it was aligned already."""
    done = aligned_streams(db)
    if stream in done:
        return False
    db.execute(
        "UPDATE meta SET value = ? WHERE key = 'aligned'", (",".join(sorted(done | {stream})),)
    )
    return True


def align(db: Database, stream: str, hub_hwm: int, cipher: RecordCipher | None) -> int:
    """Number this stream after what the hub already holds (once per store).

    A fresh store numbers from 1; if the hub holds numbers up to `hub_hwm` from an
    earlier store of this device, every record moves up by the difference, so the hub
    takes it as new instead of as a duplicate. Returns the shift.
    """
    done = aligned_streams(db)
    if stream in done:
        return 0
    shift = _renumber_after(db, stream, hub_hwm, cipher)
    # A successor of a store set aside numbers after its predecessor's last number
    # (`seed`); if the hub holds less than that, the numbers between were lost with
    # the old store: the first batch starts right after the hub's mark and covers them.
    db.execute(
        "UPDATE streams SET acked_seq = ? WHERE stream = ? AND acked_seq > ?",
        (hub_hwm, stream, hub_hwm),
    )
    db.execute(
        "UPDATE meta SET value = ? WHERE key = 'aligned'", (",".join(sorted(done | {stream})),)
    )
    return shift


def seed(db: Database, after: dict[str, int]) -> None:
    """Make an empty store number each stream after `after` (its predecessor's last
    numbers): none it gives can then be one the predecessor gave, even one still on its
    way to the hub. The store stays unaligned: `align` moves it past the hub's mark too.
    """
    for stream, last in after.items():
        db.execute(
            "UPDATE streams SET next_seq = ?, acked_seq = ? WHERE stream = ? AND records = 0",
            (last + 1, last, stream),
        )


def _renumber_after(db: Database, stream: str, hub_hwm: int, cipher: RecordCipher | None) -> int:
    """Move every record kept so its numbers follow `hub_hwm`; return the shift."""
    row = db.execute("SELECT acked_seq FROM streams WHERE stream = ?", (stream,)).fetchone()
    shift: int = max(0, hub_hwm - row["acked_seq"])
    if not shift:
        return 0
    rows = db.execute(
        "SELECT seq, body FROM records WHERE stream = ? ORDER BY seq DESC", (stream,)
    ).fetchall()
    for r in rows:  # highest first: a moved number never meets one not yet moved
        body = r["body"]
        if cipher:
            body = cipher.seal(stream, r["seq"] + shift, cipher.open(stream, r["seq"], body))
        db.execute(
            "UPDATE records SET seq = ?, body = ? WHERE stream = ? AND seq = ?",
            (r["seq"] + shift, body, stream, r["seq"]),
        )
    db.execute(
        "UPDATE streams SET next_seq = next_seq + ?, acked_seq = ? WHERE stream = ?",
        (shift, hub_hwm, stream),
    )
    return shift
