"""The tasks of a hub bundle on the device: their deadline and lease count from the
bundle's making (the hub's reckoning), not from when the stick arrived."""

from __future__ import annotations

import msgspec

from edge.courier import still_due
from outpost import wire

DAY = 86400.0


def assignment(task_id: str, deadline_in_s: float, lease_s: float) -> wire.Assignment:
    return wire.Assignment(
        task_id=task_id,
        attempt=1,
        model="m",
        input=msgspec.Raw(msgspec.msgpack.encode([1])),
        priority=0,
        deadline_in_s=deadline_in_s,
        lease_s=lease_s,
    )


def test_the_days_on_the_stick_come_off_the_deadline_and_the_lease() -> None:
    tasks = [
        assignment("due", deadline_in_s=30 * DAY, lease_s=7 * DAY),
        assignment("expired", deadline_in_s=2 * DAY, lease_s=7 * DAY),
        assignment("lapsed", deadline_in_s=30 * DAY, lease_s=5 * DAY),
    ]
    due, overdue = still_due(tasks, 6 * DAY)
    assert overdue == 2
    assert [(t.task_id, t.deadline_in_s, t.lease_s) for t in due] == [("due", 24 * DAY, 1 * DAY)]


def test_a_bundle_dated_ahead_of_the_device_clock_counts_as_made_now() -> None:
    tasks = [assignment("due", deadline_in_s=3600, lease_s=600)]
    due, overdue = still_due(tasks, -DAY)
    assert overdue == 0
    assert [(t.deadline_in_s, t.lease_s) for t in due] == [(3600, 600)]
