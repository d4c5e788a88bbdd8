"""The in-memory copy of each stream's newest records (`edge.store.tail`), alone."""

from __future__ import annotations

from edge.store.tail import Tail


def _bodies(first: int, last: int) -> list[bytes]:
    return [f"r{seq}".encode() for seq in range(first, last + 1)]


def test_a_read_that_starts_inside_the_copy_is_answered_from_it() -> None:
    tail = Tail()
    tail.added("results", 1, 10.0, _bodies(1, 5))

    assert tail.batch("results", 2, 5, 100, 1 << 20) == [
        (3, 10.0, b"r3"),
        (4, 10.0, b"r4"),
        (5, 10.0, b"r5"),
    ]
    assert tail.hits == 1


def test_a_read_the_copy_does_not_start_is_left_to_the_file() -> None:
    tail = Tail()
    tail.added("results", 11, 10.0, _bodies(11, 12))

    assert tail.batch("results", 9, 12, 100, 1 << 20) is None  # 10 is not held
    assert tail.batch("results", 12, 12, 100, 1 << 20) is None  # nothing after 12
    assert tail.batch("events", 0, 12, 100, 1 << 20) is None
    assert tail.batch("results", 10, 12, 100, 1 << 20) == [(11, 10.0, b"r11"), (12, 10.0, b"r12")]
    assert tail.hits == 1


def test_reads_stop_at_the_disk_and_at_the_batch_limits() -> None:
    tail = Tail()
    tail.added("results", 1, 1.0, [b"a" * 100] * 10)

    assert [r[0] for r in tail.batch("results", 0, 4, 100, 1 << 20) or []] == [1, 2, 3, 4]
    assert [r[0] for r in tail.batch("results", 0, 10, 3, 1 << 20) or []] == [1, 2, 3]
    assert [r[0] for r in tail.batch("results", 0, 10, 100, 250) or []] == [1, 2]
    # At least one record, however small the byte limit, as the file's read does.
    assert [r[0] for r in tail.batch("results", 0, 10, 100, 10) or []] == [1]
    assert tail.batch("results", 0, 0, 100, 1 << 20) == []  # none on the disk yet


def test_numbers_that_do_not_follow_start_the_copy_again() -> None:
    tail = Tail()
    tail.added("results", 1, 1.0, _bodies(1, 3))
    tail.added("results", 7, 2.0, _bodies(7, 8))

    assert tail.batch("results", 0, 8, 100, 1 << 20) is None
    assert tail.batch("results", 6, 8, 100, 1 << 20) == [(7, 2.0, b"r7"), (8, 2.0, b"r8")]


def test_acknowledged_and_forgotten_records_leave_the_copy() -> None:
    tail = Tail()
    tail.added("results", 1, 1.0, _bodies(1, 5))
    tail.added("events", 1, 1.0, _bodies(1, 2))

    tail.acknowledged("results", 3)
    assert tail.batch("results", 2, 5, 100, 1 << 20) is None
    assert [r[0] for r in tail.batch("results", 3, 5, 100, 1 << 20) or []] == [4, 5]

    tail.forget(["results"])
    assert tail.batch("results", 3, 5, 100, 1 << 20) is None
    assert tail.batch("events", 0, 2, 100, 1 << 20) is not None


def test_the_copy_keeps_only_the_newest_within_its_bounds() -> None:
    tail = Tail(max_records=4, max_bytes=1 << 20)
    tail.added("results", 1, 1.0, _bodies(1, 10))
    assert tail.batch("results", 5, 10, 100, 1 << 20) is None
    assert [r[0] for r in tail.batch("results", 6, 10, 100, 1 << 20) or []] == [7, 8, 9, 10]

    by_bytes = Tail(max_records=100, max_bytes=250)
    by_bytes.added("results", 1, 1.0, [b"x" * 100] * 5)
    assert by_bytes.batch("results", 2, 5, 100, 1 << 20) is None
    assert [r[0] for r in by_bytes.batch("results", 3, 5, 100, 1 << 20) or []] == [4, 5]
