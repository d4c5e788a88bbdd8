"""How far a stream was handed out for upload (its sent mark), kept in the store.

Records numbered up to the mark may be at the hub already, their acknowledgement still
on its way (or lost with a restart): a full metrics stream must not merge them into a
roll-up numbered above the hub's mark, which the hub would count again (see `rollup`).
The mark is raised, and committed, before a batch leaves the store's thread: by the
uploader's reads and the courier's alike. It only rises; records below it are deleted
by the hub's acknowledgement, or evicted, never rolled up.
"""

from __future__ import annotations

from outpost.sqlite import Database

TRACKED = frozenset({"metrics"})  # the only stream whose records are merged in place


def _key(stream: str) -> str:
    return f"sent.{stream}"


def mark(db: Database, stream: str) -> int:
    """The highest number of `stream` handed out for upload (0: none yet)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_key(stream),)).fetchone()
    return int(row[0]) if row is not None else 0


def raise_to(db: Database, stream: str, seq: int) -> None:
    """Records of `stream` up to `seq` were handed out (inside a transaction)."""
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
        "SET value = excluded.value WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
        (_key(stream), str(seq)),
    )
