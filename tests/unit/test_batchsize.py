"""The upload batch budget: larger while acks come back quickly, smaller while they are
slow, quartered after a stall, within its floor and the configured ceiling."""

from __future__ import annotations

import itertools

from edge.batchsize import FLOOR_BYTES, MAX_PATIENCE_S, START_BYTES, BatchBudget

KIB = 1024


def budget(ceiling: int = 200 * KIB) -> BatchBudget:
    # ack timeout 16 s, 4 in flight: quick under 1 s a batch, slow over 8 s
    return BatchBudget(ceiling, in_flight=4, ack_timeout_s=16.0)


def test_it_starts_at_64_kib_or_the_ceiling_if_lower() -> None:
    assert budget().bytes == START_BYTES == 64 * KIB
    assert budget(ceiling=8 * KIB).bytes == 8 * KIB


def test_quick_acks_of_full_batches_double_it_up_to_the_ceiling() -> None:
    b = budget()
    b.acked([(0.05, True)])
    assert b.bytes == 128 * KIB
    b.acked([(0.05, True), (0.2, False)])
    assert b.bytes == 200 * KIB  # the ceiling, not 256 KiB
    b.acked([(0.05, True)])
    assert b.bytes == 200 * KIB


def test_quick_acks_of_short_batches_say_nothing_about_larger_ones() -> None:
    b = budget()
    b.acked([(0.01, False), (0.01, False)])
    assert b.bytes == 64 * KIB


def test_an_ack_between_quick_and_slow_keeps_it() -> None:
    b = budget()
    b.acked([(0.5, True), (3.0, True)])  # one of them over a quarter of 16 s / 4
    assert b.bytes == 64 * KIB


def test_a_slow_batch_halves_it_once_per_ack_down_to_the_floor() -> None:
    b = budget()
    b.acked([(9.0, True), (12.0, False)])  # over half of the 16 s timeout
    assert b.bytes == 32 * KIB
    for _ in range(10):
        b.acked([(9.0, False)])
    assert b.bytes == FLOOR_BYTES


def test_a_stall_quarters_it() -> None:
    b = budget()
    b.stalled()
    assert b.bytes == 16 * KIB
    b.stalled()
    b.stalled()
    assert b.bytes == FLOOR_BYTES


def test_a_batch_is_full_when_it_used_half_the_budget_or_every_record_it_may_hold() -> None:
    b = budget()
    assert b.full(plain_bytes=32 * KIB, records=10, batch_records=1000)
    assert not b.full(plain_bytes=32 * KIB - 1, records=10, batch_records=1000)
    assert b.full(plain_bytes=100, records=1000, batch_records=1000)


def test_no_acked_batch_changes_nothing() -> None:
    b = budget()
    b.acked([])
    assert b.bytes == 64 * KIB


def test_the_wait_for_an_ack_grows_while_the_hub_stays_silent_and_resets_on_an_ack() -> None:
    """A hub silent with the broker up got every device's window again every
    ack_timeout_s, for as long as it lasted."""
    budget = BatchBudget(200 * 1024, 4, 15.0)
    assert budget.patience_s == 15.0
    waits = []
    for _ in range(12):
        budget.stalled()
        waits.append(budget.patience_s)
    assert all(b > a for a, b in itertools.pairwise(waits[:3]))  # doubling, jittered
    assert 30.0 <= waits[0] <= 37.5
    assert waits[-1] == MAX_PATIENCE_S
    budget.acked([(1.0, False)])
    assert budget.patience_s == 15.0
    # Any word from the hub (an ack covering nothing in flight, a gap) says it is back.
    budget.stalled()
    budget.heard()
    assert budget.patience_s == 15.0
