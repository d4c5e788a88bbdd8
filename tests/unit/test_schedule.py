"""The test run's own order: the long tests at the front of each xdist worker's share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import schedule
from tests.schedule import long_first, share_sizes


@dataclass(frozen=True)
class Case:
    nodeid: str


def test_shares_are_split_as_worksteal_splits_them() -> None:
    assert share_sizes(10, 3) == [3, 3, 4]
    assert share_sizes(2, 3) == [0, 1, 1]
    assert sum(share_sizes(2464, 4)) == 2464


def test_long_tests_lead_each_share_balanced_and_nothing_is_lost_or_doubled() -> None:
    items = [Case(f"t{i}") for i in range(30)]
    durations = {"t29": 100.0, "t28": 60.0, "t27": 50.0, "t5": 45.0, "t3": 1.0}
    ordered = long_first(items, 3, durations)

    assert sorted(ordered, key=lambda c: int(c.nodeid[1:])) == items
    starts = [0, 10, 20]  # share_sizes(30, 3)
    heads = [ordered[start].nodeid for start in starts]
    assert heads == ["t29", "t28", "t27"]
    # The fourth goes to the least loaded share (50 s), right behind its first.
    assert ordered[21].nodeid == "t5"
    # The short ones keep their order.
    short = [c.nodeid for c in ordered if c.nodeid not in durations or durations[c.nodeid] < 5]
    assert short == [c.nodeid for c in items if c.nodeid in short]


def test_one_process_keeps_the_order() -> None:
    items = [Case(f"t{i}") for i in range(5)]
    assert long_first(items, 1, {"t4": 100.0}) == items


def test_a_module_sharing_a_fixture_moves_whole_when_one_of_its_tests_is_long() -> None:
    items = [Case(f"m{i}") for i in range(3)] + [Case(f"t{i}") for i in range(27)]
    durations = {"m0": 40.0, "m2": 30.0, "t9": 60.0, "t10": 50.0}
    ordered = long_first(items, 3, durations, lambda c: "m" if c.nodeid[0] == "m" else c.nodeid)

    assert sorted(c.nodeid for c in ordered) == sorted(c.nodeid for c in items)
    # 70 s: the longest unit, whole and in its order (m1, short, between its long ones).
    assert [c.nodeid for c in ordered[:3]] == ["m0", "m1", "m2"]
    assert [ordered[10].nodeid, ordered[20].nodeid] == ["t9", "t10"]


def test_damaged_times_are_no_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = tmp_path / "durations.json"
    monkeypatch.setattr(schedule, "DURATIONS", damaged)
    for text in ("{not json", '["a"]', '{"t": "slow"}', '{"t": null}'):
        damaged.write_text(text)
        assert schedule.known_durations() == {}
    damaged.write_text('{"t": 7}')
    assert schedule.known_durations() == {"t": 7.0}
