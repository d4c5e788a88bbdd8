"""How full the agent's store is, and how much it has written: what `stats` reports."""

from __future__ import annotations

from typing import Any

from edge.store.streams import Bounds
from edge.store.wear import Unrecorded
from outpost.sqlite import Database


def fill_of(bounds: Bounds | None, records: int, size: int) -> float:
    """How full a stream is, 0..1: the larger of its records and bytes against their
    limits (0 when it has none)."""
    if bounds is None:
        return 0.0
    shares = [
        used / limit
        for used, limit in ((records, bounds.max_records), (size, bounds.max_bytes))
        if limit
    ]
    return min(1.0, max(shares, default=0.0))


def read_stats(db: Database, unrecorded: Unrecorded, bounds: dict[str, Bounds]) -> dict[str, Any]:
    """Each stream's fill and every counter, with the wear measured and not yet recorded
    in them (`unrecorded`, read on the writer thread)."""
    counters = {r["name"]: r["value"] for r in db.execute("SELECT * FROM counters").fetchall()}
    fill = {}
    for r in db.execute("SELECT * FROM streams").fetchall():
        # The lowest number is the oldest write; the primary key finds it at once.
        first = db.execute(
            "SELECT ts FROM records WHERE stream = ? ORDER BY seq LIMIT 1", (r["stream"],)
        ).fetchone()
        fill[r["stream"]] = {
            "records": r["records"],
            "bytes": r["bytes"],
            "oldest_ts": first["ts"] if first else None,
            "acked_seq": r["acked_seq"],
            "last_seq": r["next_seq"] - 1,
        }
    counters["wear.bytes"] = counters.get("wear.bytes", 0) + unrecorded.bytes
    counters["wear.records"] = counters.get("wear.records", 0) + unrecorded.records
    records = counters["wear.records"]
    per_record = counters["wear.bytes"] / records if records else 0.0
    for name, stream in fill.items():
        stream["fill"] = fill_of(bounds.get(name), stream["records"], stream["bytes"])
    return {"streams": fill, "counters": counters, "bytes_written_per_record": per_record}
