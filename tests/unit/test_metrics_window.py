"""The metric roll-up window kept across restarts: continued, closed out when overdue,
clamped when the clock changed, started afresh when the file is missing or damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.metrics_window import MAX_AGE_S, MetricsWindow

INTERVAL = 60.0
T0 = 1_700_000_000.0  # wall clock


class Clocks:
    """A wall clock and a monotonic one, moved by hand; a new process restarts only the
    monotonic one (set far from the wall clock, as a boot's is)."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 100.0

    def window(self, path: Path) -> MetricsWindow:
        return MetricsWindow(path, wall=lambda: self.wall, monotonic=lambda: self.mono)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def restart(self) -> None:
        self.mono = 5.0


def kept(path: Path) -> float:
    body = json.loads(path.read_bytes())
    assert body["format"] == 1
    start: float = body["start"]
    return start


def test_a_first_start_opens_a_window_and_keeps_its_start(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "metrics-window.json"
    window = clocks.window(path)
    assert window.resume() == 0.0
    assert kept(path) == T0
    assert window.due_in(INTERVAL) == INTERVAL
    clocks.advance(INTERVAL + 5)
    assert window.due_in(INTERVAL) == 0.0
    assert window.close() == INTERVAL + 5
    window.save()
    assert kept(path) == T0 + INTERVAL + 5
    assert window.due_in(INTERVAL) == INTERVAL
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_restarts_continue_the_window_instead_of_restarting_the_timer(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "metrics-window.json"
    clocks.window(path).resume()
    # Restarted every 25 s, without a roll-up in between (killed): the window goes on.
    for _ in range(2):
        clocks.advance(25)
        clocks.restart()
        window = clocks.window(path)
        window.resume()
    assert window.due_in(INTERVAL) == INTERVAL - 50
    clocks.advance(25)
    clocks.restart()
    window = clocks.window(path)
    assert window.resume() == 75  # overdue: the roll-up closing it is due at once
    assert window.due_in(INTERVAL) == 0.0
    assert window.close() == 75  # and covers the window since its start
    assert kept(path) == T0  # until saved, the file still names the open window


def test_a_forgotten_window_starts_afresh(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "metrics-window.json"
    window = clocks.window(path)
    window.resume()
    clocks.advance(30)
    window.close()
    window.forget()  # a graceful stop wrote the partial window's roll-up
    assert not path.exists()
    clocks.advance(500)
    clocks.restart()
    window = clocks.window(path)
    assert window.resume() == 0.0
    assert window.due_in(INTERVAL) == INTERVAL
    assert kept(path) == T0 + 530
    window.forget()
    window.forget()  # nothing to remove: no error


@pytest.mark.parametrize(
    ("jump", "age"),
    [
        (-3600.0, 0.0),  # the clock went back an hour: the start is in the future
        (10 * 365 * 86400.0, MAX_AGE_S),  # a start from a clock set years late
    ],
)
def test_a_start_the_clock_moved_away_from_is_clamped(
    tmp_path: Path, jump: float, age: float
) -> None:
    clocks, path = Clocks(), tmp_path / "metrics-window.json"
    clocks.window(path).resume()
    clocks.wall += jump
    clocks.restart()
    window = clocks.window(path)
    assert window.resume() == age
    assert kept(path) == clocks.wall - age  # clamped on disk too
    # Neither stalls (due within an interval) nor floods: one roll-up, then on time.
    assert window.due_in(INTERVAL) <= INTERVAL
    clocks.advance(window.due_in(INTERVAL))
    assert window.close() == pytest.approx(max(age, INTERVAL))
    assert window.due_in(INTERVAL) == INTERVAL


def test_a_clock_step_while_running_moves_no_roll_up(tmp_path: Path) -> None:
    clocks, path = Clocks(), tmp_path / "metrics-window.json"
    window = clocks.window(path)
    window.resume()
    clocks.advance(10)
    clocks.wall -= 86400  # NTP steps back a day
    assert window.due_in(INTERVAL) == INTERVAL - 10
    clocks.wall += 2 * 86400  # and forwards
    assert window.due_in(INTERVAL) == INTERVAL - 10


@pytest.mark.parametrize(
    "content",
    [
        b"",  # a file cut short (an older writer, a damaged disk)
        b"{not json",
        b"[]",
        b'{"format": 2, "start": 1}',
        b'{"format": 1}',
        b'{"format": 1, "start": "yesterday"}',
        b'{"format": 1, "start": true}',
        b'{"format": 1, "start": NaN}',
    ],
)
def test_a_damaged_file_starts_a_fresh_window(tmp_path: Path, content: bytes) -> None:
    clocks, path = Clocks(), tmp_path / "metrics-window.json"
    path.write_bytes(content)
    window = clocks.window(path)
    assert window.resume() == 0.0
    assert window.due_in(INTERVAL) == INTERVAL
    assert kept(path) == T0


def test_a_failing_disk_leaves_the_timer_running(tmp_path: Path) -> None:
    clocks = Clocks()
    path = tmp_path / "missing-folder" / "metrics-window.json"
    window = clocks.window(path)
    assert window.resume() == 0.0  # not kept, logged
    clocks.advance(INTERVAL)
    assert window.due_in(INTERVAL) == 0.0
    assert window.close() == INTERVAL
    window.save()
    assert not path.exists()
