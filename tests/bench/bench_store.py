"""Records/s into the agent's store (through its group-committing writer, durable on
return) beside bare sqlite3 `executemany` of the same rows in one transaction, WAL and
synchronous=FULL as the store uses."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import msgpack

from edge.store import AgentStore, Bounds
from edge.store.wear import thread_bytes_written
from tests.bench.common import RESULT, Result, per_second

N = 20_000
PER_CALL = 100  # records per producer call (a local program posting a batch)
PRODUCERS = 8


def _bare(path: Path) -> tuple[float, float]:
    """Records/s, and bytes written per record (this thread's write calls, as the store
    counts its writer thread's: WAL frames and checkpoints)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE records (stream TEXT, seq INTEGER, ts REAL, body BLOB, "
        "PRIMARY KEY (stream, seq)) WITHOUT ROWID"
    )
    body = msgpack.packb(RESULT)
    written = thread_bytes_written()
    start = time.perf_counter()
    for first in range(0, N, PER_CALL):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO records VALUES ('results', ?, ?, ?)",
            [(seq, 0.0, body) for seq in range(first, first + PER_CALL)],
        )
        db.execute("COMMIT")
    rate = per_second(N, time.perf_counter() - start)
    after = thread_bytes_written()
    db.close()
    assert written is not None, "no /proc/thread-self/io here"
    assert after is not None, "no /proc/thread-self/io here"
    return rate, (after - written) / N


async def _ours(path: Path) -> tuple[float, float]:
    unbounded = Bounds(0, 0, 0)
    store = AgentStore(path, {s: unbounded for s in ("results", "events", "metrics")})
    await store.start()

    async def producer(calls: int) -> None:
        for _ in range(calls):
            await store.append("results", [RESULT] * PER_CALL)

    start = time.perf_counter()
    calls = N // PER_CALL // PRODUCERS
    await asyncio.gather(*(producer(calls) for _ in range(PRODUCERS)))
    rate = per_second(calls * PRODUCERS * PER_CALL, time.perf_counter() - start)
    per_record = (await store.stats())["bytes_written_per_record"]
    await store.close()
    return rate, per_record


def run(root: Path) -> list[Result]:
    root.mkdir(parents=True, exist_ok=True)
    bare, bare_per_record = _bare(root / "bare.db")
    ours, per_record = asyncio.run(_ours(root / "store.db"))
    return [
        Result(
            "agent store: results appended (durable)",
            ours,
            bare,
            "rec/s",
            f"raw = executemany of {PER_CALL}/txn, FULL; {PRODUCERS} producers",
        ),
        Result(
            "agent store: bytes written per record",
            per_record,
            bare_per_record,
            "B",
            "measured from the writer thread's write calls; raw = the bare loop's, the same "
            f"rows {PER_CALL} a transaction (WAL frames, checkpoints)",
        ),
    ]
