"""Unit tests of edge/pacing.py: sync windows and the byte-rate cap."""

from __future__ import annotations

import asyncio
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

    async def fake_wait(event: asyncio.Event, seconds: float) -> bool:  # time is faked
        slept.append(seconds)
        clock[0] += seconds
        return False  # the whole wait: no new cap

    monkeypatch.setattr("edge.pacing.wait_event", fake_wait)
    for _ in range(10):
        await rate.take(500)

    # 5000 bytes at 1000 B/s with a one-second burst: about 4 s of waiting.
    assert sum(slept) == pytest.approx(4.0)


async def test_a_cap_lifted_or_raised_reaches_the_send_waiting_on_it() -> None:
    """A cap of 1 byte/s set by mistake put a batch to sleep for hours; the policy that
    lifted it changed nothing until then. A new cap now cuts the wait short, from any
    thread (a policy is applied from one)."""
    rate = ByteRate(1)
    waiting = asyncio.create_task(rate.take(10_000))  # 10,000 s at 1 byte/s
    await asyncio.sleep(0)  # it waits
    assert not waiting.done()
    await asyncio.to_thread(rate.retune, 0)  # lifted
    await asyncio.wait_for(waiting, 10)

    raised = ByteRate(1)
    waiting = asyncio.create_task(raised.take(10_000))
    await asyncio.sleep(0)
    raised.retune(1_000_000)  # raised: the 10,000 bytes owed take 10 ms now
    await asyncio.wait_for(waiting, 10)
