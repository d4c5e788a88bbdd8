"""Uploads read from the store's in-memory copy of its newest records (`tail`) are what
the file holds: under appends, acknowledgements, renumbering, roll-ups and expiry, each
answer is compared with a read of the database file by a connection of its own."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from edge.store import AgentStore, Bounds, RecordCipher, streams
from outpost.sqlite import Database
from tests.support import eventually

UNBOUNDED = Bounds(0, 0, 0)
READS = 400


def _at(store: AgentStore, stream: str, seq: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return store.readable_through(stream) >= seq

    return probe


def _from_file(
    path: Path, cipher: RecordCipher | None, stream: str, after: int, **kw: int
) -> list[tuple[int, float, bytes]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return streams.read_batch(Database(conn), stream, after, cipher=cipher, **kw)
    finally:
        conn.close()


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
async def test_every_read_from_memory_is_what_the_file_holds(
    tmp_path: Path, sealed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.store.EXPIRE_EVERY_S", 0.0)  # every commit expires what is due
    rng = random.Random(7)
    cipher = RecordCipher.from_key_file(tmp_path / "store.key") if sealed else None
    path = tmp_path / "store.db"
    # A small metrics stream: appends past its bound roll up and evict older records.
    bounds = {"results": UNBOUNDED, "events": UNBOUNDED, "metrics": Bounds(60, 0, 0)}
    store = AgentStore(path, bounds, cipher)
    await store.start()
    sent = {"results": 0, "events": 0, "metrics": 0}
    try:
        for n in range(READS):
            stream = rng.choice(["results", "results", "events", "metrics"])
            action = rng.random()
            if action < 0.5:
                bodies = [{"n": n, "v": rng.random(), "pad": "x" * rng.randint(0, 300)}]
                appended = await store.append(
                    stream, bodies * rng.randint(1, 5), confirm=rng.choice(["synced", "written"])
                )
                # Until its sync, what is readable moves under the comparison: wait for it
                # (that nothing unsynced is read is test_store_written's, through this copy).
                await eventually(
                    _at(store, stream, appended.last_seq), timeout=10, every=0.001, what="sync"
                )
            elif action < 0.6:
                # The hub's mark: usually what was sent, at times past every number given
                # (another store used this identity), which renumbers what is held.
                last = (await store.cursors())[stream][1]
                hwm = sent[stream] if rng.random() < 0.8 else last + rng.randint(1, 50)
                await store.acknowledge(stream, hwm)
                sent[stream] = max(sent[stream], hwm)
            elif action < 0.62:
                # A fresh store's numbering moved after the hub's (once per stream).
                await store.align(stream, rng.randint(0, 400))
            elif action < 0.64:
                store.set_bounds({**bounds, "results": Bounds(0, 0, 1e-9)})  # all are due
                await store.append("events", [{"expire": n}])
                store.set_bounds(bounds)
            through = store.readable_through(stream)
            after = rng.choice([sent[stream], max(0, through - rng.randint(0, 8))])
            limits = {"max_records": rng.randint(1, 20), "max_bytes": rng.randint(200, 4000)}
            hits = store.tail_hits
            answer = await store.batch_packed(stream, after, **limits)
            held = _from_file(path, cipher, stream, after, through_seq=through, **limits)
            assert answer == held, (n, stream, after, store.tail_hits > hits)
            if answer:
                sent[stream] = answer[-1][0]
        # The memory answered most reads (the test would prove nothing otherwise), and
        # the file the rest.
        assert READS / 4 < store.tail_hits < READS
    finally:
        await store.close()
