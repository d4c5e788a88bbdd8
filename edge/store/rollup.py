"""Roll-ups of a full metrics stream: its oldest records merged, ten at a time, into
records holding count, mean, min and max of each numeric field (the agent's own
roll-ups merged into one roll-up, counts added up).

Only records not yet handed out for upload are merged (`after_seq`, the stream's sent
mark: see `sent`). A record the hub may hold already, merged into one numbered above the
hub's mark, would be counted again there.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag

from edge.store.cipher import RecordCipher
from edge.store.counters import bump
from outpost import rollup as rollup_record  # `rollup` is also a function here
from outpost.sqlite import Database

logger = logging.getLogger(__name__)

ROLLUP_GROUP = 10  # metrics records merged into one when the stream is full


def rollup(db: Database, cipher: RecordCipher | None, after_seq: int = 0) -> int:
    """Merge the oldest half of the not-yet-rolled metrics numbered after `after_seq`,
    `ROLLUP_GROUP` at a time; return how many records were merged."""
    (total,) = db.execute(
        "SELECT COUNT(*) FROM records WHERE stream = 'metrics' AND rolled = 0 AND seq > ?",
        (after_seq,),
    ).fetchone()
    rows = db.execute(
        "SELECT seq, ts, body FROM records WHERE stream = 'metrics' AND rolled = 0 "
        "AND seq > ? ORDER BY seq LIMIT ?",
        (after_seq, (total // 2) // ROLLUP_GROUP * ROLLUP_GROUP),
    ).fetchall()
    merged = 0
    for start in range(0, len(rows), ROLLUP_GROUP):
        group = rows[start : start + ROLLUP_GROUP]
        bodies = [_unpack(r, cipher) for r in group]
        last = group[-1]["seq"]
        summary = msgspec.msgpack.encode(_summarise(bodies, group[0]["ts"], group[-1]["ts"]))
        stored = cipher.seal("metrics", last, summary) if cipher else summary
        seqs = [r["seq"] for r in group]
        freed = sum(len(r["body"]) for r in group)
        db.conn.executemany(
            "DELETE FROM records WHERE stream = 'metrics' AND seq = ?", [(s,) for s in seqs[:-1]]
        )
        db.execute(
            "UPDATE records SET body = ?, rolled = 1 WHERE stream = 'metrics' AND seq = ?",
            (stored, last),
        )
        db.execute(
            "UPDATE streams SET records = records - ?, bytes = bytes - ? + ? "
            "WHERE stream = 'metrics'",
            (len(group) - 1, freed, len(stored)),
        )
        merged += len(group)
    if merged:
        bump(db, "rolled_up.metrics", merged)
    return merged


def _summarise(bodies: list[dict[str, Any]], first_ts: float, last_ts: float) -> dict[str, Any]:
    # The agent's own roll-ups merge into one roll-up (counts add up, nothing the hub
    # folds is lost); other records become count, mean, min and max of their numbers.
    rollups = [b for b in bodies if b.get("kind") == rollup_record.KIND]
    others = [b for b in bodies if b.get("kind") != rollup_record.KIND]
    merged = rollup_record.merge(rollups) if rollups else {}
    if not others:
        return merged
    return {**_numbers(others, first_ts, last_ts), **merged}


def _numbers(bodies: list[dict[str, Any]], first_ts: float, last_ts: float) -> dict[str, Any]:
    numeric: dict[str, list[float]] = {}
    for body in bodies:
        for key, value in body.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numeric.setdefault(key, []).append(value)
    return {
        "rollup": {"count": len(bodies), "from_ts": first_ts, "to_ts": last_ts},
        "mean": {k: sum(v) / len(v) for k, v in numeric.items()},
        "min": {k: min(v) for k, v in numeric.items()},
        "max": {k: max(v) for k, v in numeric.items()},
    }


def _unpack(row: Any, cipher: RecordCipher | None) -> dict[str, Any]:
    try:
        body = cipher.open("metrics", row["seq"], row["body"]) if cipher else row["body"]
        value = msgspec.msgpack.decode(body)
    except (ValueError, RecursionError, InvalidTag):
        # A damaged record adds nothing to the roll-up it is merged into; failing here
        # would fail every append to a full metrics stream, for good.
        logger.warning("metrics record %d is damaged: left out of its roll-up", row["seq"])
        return {}
    return value if isinstance(value, dict) else {"value": value}
