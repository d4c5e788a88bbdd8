"""The agent's store on a real SQLite file: numbering, bounds, roll-up, recovery, sealing."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from edge.store import AgentStore, Bounds, RecordCipher, StoreReadError, StreamFullError

UNBOUNDED = Bounds(0, 0, 0)
StoreMaker = Callable[..., AgentStore]


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[StoreMaker]:
    opened: list[AgentStore] = []

    def _make(
        *,
        results: Bounds = UNBOUNDED,
        metrics: Bounds = UNBOUNDED,
        cipher: bool = False,
        name: str = "store.db",
    ) -> AgentStore:
        store = AgentStore(
            tmp_path / name,
            {"results": results, "events": UNBOUNDED, "metrics": metrics},
            RecordCipher.from_key_file(tmp_path / "store.key") if cipher else None,
        )
        opened.append(store)
        return store

    yield _make
    for store in opened:
        await store.close()


async def test_concurrent_appends_get_contiguous_numbers_per_stream(
    make_store: StoreMaker,
) -> None:
    store = make_store()
    await store.start()

    results = await asyncio.gather(*(store.append("results", [{"n": n}]) for n in range(200)))
    events = await store.append("events", [{"e": 1}, {"e": 2}])
    batch = await store.batch("results", 0, max_records=1000, max_bytes=1 << 20)

    assert sorted(r.first_seq for r in results) == list(range(1, 201))
    assert (events.first_seq, events.last_seq) == (1, 2)
    assert [seq for seq, _, _ in batch] == list(range(1, 201))
    assert [body["n"] for _, _, body in batch] == [r_n for r_n in range(200)]


async def test_acknowledged_records_are_deleted_and_others_kept(make_store: StoreMaker) -> None:
    store = make_store()
    await store.start()
    await store.append("results", [{"n": n} for n in range(10)])

    deleted = await store.acknowledge("results", 6)
    rest = await store.batch("results", 0, max_records=100, max_bytes=1 << 20)
    cursors = await store.cursors()

    assert deleted == 6
    assert [seq for seq, _, _ in rest] == [7, 8, 9, 10]
    assert cursors["results"] == (6, 10)


async def test_batches_respect_count_and_byte_bounds(make_store: StoreMaker) -> None:
    store = make_store()
    await store.start()
    await store.append("results", [{"pad": "x" * 1000} for _ in range(50)])

    by_count = await store.batch("results", 0, max_records=7, max_bytes=1 << 20)
    by_bytes = await store.batch("results", 0, max_records=100, max_bytes=10_000)

    assert len(by_count) == 7
    assert 1 <= len(by_bytes) <= 10


async def test_full_results_stream_refuses_and_loses_nothing(make_store: StoreMaker) -> None:
    store = make_store(results=Bounds(100, 0, 0))
    await store.start()
    await store.append("results", [{"n": n} for n in range(100)])

    with pytest.raises(StreamFullError, match="results stream is full") as refused:
        await store.append("results", [{"n": 100}])
    kept = await store.batch("results", 0, max_records=1000, max_bytes=1 << 20)
    stats = await store.stats()
    await store.acknowledge("results", 50)
    accepted_again = await store.append("results", [{"n": 100}])

    assert "refusing new work" in refused.value.reason
    assert [body["n"] for _, _, body in kept] == list(range(100))
    assert stats["counters"]["refused.results"] == 1
    assert accepted_again.first_seq == 101


async def test_full_metrics_stream_rolls_up_then_evicts_and_keeps_going(
    make_store: StoreMaker,
) -> None:
    store = make_store(metrics=Bounds(40, 0, 0))
    await store.start()

    for n in range(500):
        await store.append("metrics", [{"cpu": float(n)}])
    stats = await store.stats()
    rows = await store.batch("metrics", 0, max_records=1000, max_bytes=1 << 22)

    assert stats["streams"]["metrics"]["records"] <= 40
    assert stats["streams"]["metrics"]["last_seq"] == 500
    assert stats["counters"]["rolled_up.metrics"] > 0
    assert stats["counters"].get("evicted.metrics", 0) > 0
    assert rows[-1][2] == {"cpu": 499.0}, "the newest sample is kept as it was"
    rolled = [body for _, _, body in rows if "rollup" in body]
    assert rolled, "some records are roll-ups"
    first = rolled[0]
    assert first["rollup"]["count"] == 10
    assert first["min"]["cpu"] <= first["mean"]["cpu"] <= first["max"]["cpu"]
    seqs = [seq for seq, _, _ in rows]
    assert seqs == sorted(seqs)


async def test_damaged_file_is_set_aside_and_a_fresh_store_starts(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    damage = b"this is not a database, it is what is left of one" * 100
    path.write_bytes(damage)

    store = AgentStore(path, {s: UNBOUNDED for s in ("results", "events", "metrics")})
    await store.start()
    appended = await store.append("results", [{"n": 1}])
    await store.close()

    assert store.set_aside is not None
    assert store.set_aside.read_bytes() == damage, "the evidence was changed"
    assert ".corrupt-" in store.set_aside.name
    assert appended.first_seq == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_sealed_bodies_are_unreadable_on_disk_and_bound_to_their_place(
    make_store: StoreMaker, tmp_path: Path
) -> None:
    store = make_store(cipher=True)
    await store.start()
    await store.append("results", [{"secret": "pump 7 pressure 3.1 bar"}] * 2)
    assert (tmp_path / "store.key").stat().st_mode & 0o777 == 0o600

    raw = (tmp_path / "store.db").read_bytes() + (tmp_path / "store.db-wal").read_bytes()
    batch = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)

    assert b"pump 7" not in raw
    assert batch[0][2] == {"secret": "pump 7 pressure 3.1 bar"}
    # Swap the two sealed bodies: each is bound to its own sequence number.
    await store.close()
    with sqlite3.connect(tmp_path / "store.db") as db:
        _one, two = (r[0] for r in db.execute("SELECT body FROM records ORDER BY seq"))
        db.execute("UPDATE records SET body = ? WHERE seq = 1", (two,))
    reopened = make_store(cipher=True)
    with pytest.raises(StoreReadError, match=r"results 1\.\.1 does not decrypt") as refused:
        await reopened.batch("results", 0, max_records=1, max_bytes=1 << 20)
    assert isinstance(refused.value.__cause__, InvalidTag)
    # Beside a record that opens, it is damage, not the wrong key: left out of the batch.
    rows = await reopened.batch("results", 0, max_records=10, max_bytes=1 << 20)
    assert [seq for seq, _, _ in rows] == [2]


async def test_group_commit_keeps_bytes_written_per_record_low(make_store: StoreMaker) -> None:
    one_by_one = make_store(name="a.db")
    grouped = make_store(name="b.db")
    await one_by_one.start()
    await grouped.start()

    for n in range(200):
        await one_by_one.append("results", [{"n": n}])
    await asyncio.gather(*(grouped.append("results", [{"n": n}]) for n in range(200)))

    alone = (await one_by_one.stats())["bytes_written_per_record"]
    together = (await grouped.stats())["bytes_written_per_record"]
    assert alone > 0
    assert together < alone / 5, (alone, together)


async def test_wear_counted_between_meter_readings_is_kept_at_close(
    make_store: StoreMaker,
) -> None:
    # Small commits leave their record counts in memory until the meter's next reading
    # (at most once a second); a close must write them even if no reading came.
    store = make_store()
    await store.start()
    for n in range(30):
        await store.append("results", [{"n": n}, {"n": -n}], confirm="written")
    await store.close()

    reopened = make_store()
    await reopened.start()
    counters = (await reopened.stats())["counters"]
    assert counters["wear.records"] == 60
    assert counters["wear.bytes"] > 0


async def test_a_fresh_store_numbers_after_what_the_hub_already_holds(
    make_store: StoreMaker,
) -> None:
    store = make_store(cipher=True)
    await store.start()
    await store.append("results", [{"n": n} for n in range(3)])

    shift = await store.align("results", 500)  # the hub holds 1..500 of an earlier store
    again = await store.align("results", 900)  # only once per store
    await store.append("results", [{"n": 3}])
    rows = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)

    assert (shift, again) == (500, 0)
    assert [(seq, body["n"]) for seq, _, body in rows] == [(501, 0), (502, 1), (503, 2), (504, 3)]
    assert (await store.cursors())["results"] == (500, 504)
    assert await store.aligned() == {"results"}


async def test_a_mark_beyond_this_stores_numbers_keeps_its_records(make_store: StoreMaker) -> None:
    store = make_store()
    await store.start()
    await store.append("results", [{"n": n} for n in range(3)])  # numbered 1..3

    # Another store with this identity (a cloned card) already took the hub to 10.
    deleted = await store.acknowledge("results", 10)
    rows = await store.batch("results", 0, max_records=10, max_bytes=1 << 20)
    stats = await store.stats()

    assert deleted == 0
    assert [(seq, body["n"]) for seq, _, body in rows] == [(11, 0), (12, 1), (13, 2)]
    assert stats["counters"]["renumbered.results"] == 3


async def test_damaged_records_are_read_errors_not_crashes_and_roll_ups_skip_them(
    make_store: StoreMaker, tmp_path: Path
) -> None:
    store = make_store(metrics=Bounds(20, 0, 0), cipher=True)
    await store.start()
    await store.append("metrics", [{"cpu": float(n)} for n in range(10)])
    # Any local program may post a record shaped like a roll-up; a byte flips on disk.
    await store.append("metrics", [{"kind": "rollup", "models": [1, 2], "tasks": "x"}])
    with sqlite3.connect(tmp_path / "store.db") as db:
        (body,) = db.execute(
            "SELECT body FROM records WHERE stream = 'metrics' AND seq = 1"
        ).fetchone()
        flipped = bytes([body[0] ^ 1]) + body[1:]
        db.execute("UPDATE records SET body = ? WHERE stream = 'metrics' AND seq = 1", (flipped,))

    with pytest.raises(StoreReadError, match="could not be read"):
        await store.batch_packed("metrics", 0, max_records=1, max_bytes=1 << 20)
    # Read with the records after it, the damaged one is left out: the stream moves on
    # (before, every read failed, and nothing after it was ever sent).
    rows = await store.batch_packed("metrics", 0, max_records=100, max_bytes=1 << 20)
    assert [seq for seq, _, _ in rows] == list(range(2, 12))
    # A full stream rolls its oldest up, damaged one included: appends go on.
    for n in range(40):
        await store.append("metrics", [{"cpu": 100.0 + n}])
    assert (await store.stats())["streams"]["metrics"]["records"] <= 20


async def test_expiry_drops_what_is_old_by_its_time_not_by_its_number(
    make_store: StoreMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the clock stepped back, a record numbered later is the old one: expiry
    counted the old records by time, then deleted as many of the lowest numbers, which
    were fresh (and, on results with max_age_s set, unsent)."""
    store = make_store(metrics=Bounds(0, 0, 14 * 86400.0))
    await store.start()
    await store.append("metrics", [{"n": 1}])  # now
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 20 * 86400.0)  # the clock steps back
    await store.append("metrics", [{"n": 2}])  # stamped 20 days ago
    monkeypatch.setattr(time, "time", real)  # and is set right again
    store._last_expire = 0.0  # the next commit expires, as one a minute does
    await store.append("metrics", [{"n": 3}])

    kept = await store.batch("metrics", 0, max_records=10, max_bytes=1 << 20)

    assert [body["n"] for _, _, body in kept] == [1, 3]
    stats = (await store.stats())["streams"]["metrics"]
    assert stats["records"] == 2
