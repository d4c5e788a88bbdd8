"""Unit tests of edge/pacing.py: sync windows and the byte-rate cap."""

from __future__ import annotations

import datetime as dt

import pytest

from edge.pacing import ByteRate, parse_windows, seconds_until_open


def at(hour: int, minute: int) -> dt.datetime:
    return dt.datetime(2026, 11, 25, hour, minute)


def test_windows_parse_and_refuse_nonsense() -> None:
    assert parse_windows(["01:00-05:00", "23:30-00:30"]) == [(60, 300), (1410, 30)]
    for bad in ["1:00-5:00", "01:00-24:00", "01:00", "05:00-05:00", "aa:bb-cc:dd"]:
        with pytest.raises(ValueError, match="sync window"):
            parse_windows([bad])


def test_no_window_means_always_open() -> None:
    assert seconds_until_open([], at(12, 0)) == 0.0


def test_inside_and_outside_a_window() -> None:
    windows = parse_windows(["01:00-05:00"])
    assert seconds_until_open(windows, at(3, 0)) == 0.0
    assert seconds_until_open(windows, at(0, 30)) == 30 * 60
    assert seconds_until_open(windows, at(5, 0)) == 20 * 3600  # closes at 05:00 sharp


def test_a_window_across_midnight() -> None:
    windows = parse_windows(["23:00-02:00"])
    assert seconds_until_open(windows, at(23, 30)) == 0.0
    assert seconds_until_open(windows, at(1, 59)) == 0.0
    assert seconds_until_open(windows, at(2, 0)) == 21 * 3600


def test_the_nearest_of_several_windows_counts() -> None:
    windows = parse_windows(["01:00-02:00", "13:00-14:00"])
    assert seconds_until_open(windows, at(12, 0)) == 3600


async def test_uncapped_rate_never_waits() -> None:
    rate = ByteRate(0)
    for _ in range(1000):
        await rate.take(1 << 20)


async def test_cap_spreads_bytes_over_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    slept: list[float] = []
    rate = ByteRate(1000, clock=lambda: clock[0])

    async def fake_sleep(seconds: float) -> None:  # time is faked, as unit tests may
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr("edge.pacing.asyncio.sleep", fake_sleep)
    for _ in range(10):
        await rate.take(500)

    # 5000 bytes at 1000 B/s with a one-second burst: about 4 s of waiting.
    assert sum(slept) == pytest.approx(4.0)
