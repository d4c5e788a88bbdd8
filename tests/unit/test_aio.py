"""wait_event: set, timed out, and cancelled even when the event is set at that moment;
finish_within: a last write outlives the caller's further cancels, within its bound;
supervise: a failure is raised as itself, a child that swallows a cancel still ends, and
one that ends slowly is waited for though the stop asks again and again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from outpost import aio
from outpost.aio import cancel_until_done, finish_within, supervise, wait_event


async def test_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_a_cancel_that_lands_as_the_event_is_set_still_cancels() -> None:
    for _ in range(200):
        event = asyncio.Event()
        loops = 0

        async def waiter(ev: asyncio.Event = event) -> None:
            nonlocal loops
            while True:  # the shape of the dispatcher's loop
                await wait_event(ev, 10)
                ev.clear()
                loops += 1

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0)  # yield once: the waiter's first step reaches its wait
        event.set()
        task.cancel()  # in the same step as the set: the race wait_for loses
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_supervise_raises_the_failure_itself_and_stops_the_siblings() -> None:
    sibling_stopped = asyncio.Event()

    async def sibling() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            sibling_stopped.set()

    async def failing() -> None:
        await asyncio.sleep(0)  # yield once: it fails mid-run, not in its first step
        raise ConnectionError("link lost")

    with pytest.raises(ConnectionError, match="link lost"):
        await supervise({"sibling": sibling(), "failing": failing()})
    assert sibling_stopped.is_set()


async def test_supervise_stops_a_child_that_swallows_its_first_cancel() -> None:
    started = asyncio.Event()
    cancels = 0

    async def stubborn() -> None:
        nonlocal cancels
        started.set()
        while True:  # what a wait_for that lost the race looks like from outside
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    running = asyncio.create_task(supervise({"stubborn": stubborn()}))
    await started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    assert cancels == 2


async def test_a_last_write_finishes_though_the_caller_is_cancelled_again() -> None:
    writing, may_finish = asyncio.Event(), asyncio.Event()
    written: list[str] = []

    async def write() -> str:
        writing.set()
        await may_finish.wait()
        written.append("window")
        return "kept"

    async def stopping() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            assert await finish_within(write(), 30) == "kept"
            raise

    task = asyncio.create_task(stopping())
    await asyncio.sleep(0)  # yield once: it reaches its wait
    task.cancel()
    await writing.wait()
    for _ in range(3):  # the stop asking again, as cancel_until_done does
        task.cancel()
        await asyncio.sleep(0)
    assert not task.done()
    may_finish.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert written == ["window"]


async def test_a_last_write_that_outlasts_its_bound_is_given_up() -> None:
    ended = asyncio.Event()

    async def hung() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    with pytest.raises(TimeoutError, match=r"within 0\.05 s"):
        await finish_within(hung(), 0.05)
    await asyncio.wait_for(ended.wait(), 5)  # cancelled, not left running


async def test_finish_within_raises_the_writes_own_error() -> None:
    async def failing() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await finish_within(failing(), 5)


async def test_supervise_waits_for_a_child_ending_slowly_though_asked_again() -> None:
    cleaning, may_finish = asyncio.Event(), asyncio.Event()
    cleaned: list[str] = []

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await finish_within(may_finish.wait(), 30)
            cleaned.append("done")
            raise

    running = asyncio.create_task(supervise({"slow": slow_to_end()}))
    await asyncio.sleep(0)  # yield once: the child starts
    stop = asyncio.create_task(cancel_until_done(running, every=0.01))
    await cleaning.wait()
    await asyncio.sleep(0.1)  # the stop asks again some ten times meanwhile
    assert not running.done()
    may_finish.set()
    await asyncio.wait_for(stop, 5)
    assert running.cancelled()
    assert cleaned == ["done"]


async def test_supervise_leaves_a_child_that_will_not_end_after_its_grace(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aio, "STOP_GRACE_S", 0.1)

    let_go = asyncio.Event()

    async def deaf() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if let_go.is_set():
                    raise  # the test's own end; until then it does not end

    running = asyncio.create_task(supervise({"deaf": deaf()}))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="outpost.aio"):
        await asyncio.wait_for(cancel_until_done(running, every=0.01), 5)
    assert running.cancelled()
    assert "deaf still running 0.1 s after asked to stop" in caplog.text
    (left,) = [t for t in asyncio.all_tasks() if t.get_name() == "deaf"]
    let_go.set()
    await asyncio.wait_for(cancel_until_done(left), 5)


async def test_supervise_past_its_grace_still_cancels_the_children_after_the_slow_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aio, "STOP_GRACE_S", 0.1)
    let_go, later_cancelled = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if let_go.is_set():
                    raise

    async def later() -> None:  # the agent's link, the hub's leadership: after it
        try:
            await asyncio.Event().wait()
        finally:
            later_cancelled.set()

    running = asyncio.create_task(supervise({"slow": slow(), "later": later()}))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done(running, every=0.01), 5)
    assert later_cancelled.is_set()
    (left,) = [t for t in asyncio.all_tasks() if t.get_name() == "slow"]
    let_go.set()
    await asyncio.wait_for(cancel_until_done(left), 5)


async def test_a_cancel_during_supervises_stop_after_a_failure_is_not_lost() -> None:
    ending = asyncio.Event()

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ConnectionError("link lost")

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ending.set()
            await finish_within(asyncio.sleep(0.1), 5)
            raise

    running = asyncio.create_task(supervise({"a": failing(), "b": slow_to_end()}))
    await ending.wait()  # a failed; supervise is ending b
    running.cancel()  # once, as a timeout or asyncio.run's last cancel does
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)


async def test_a_timeout_around_supervise_still_times_out_while_a_child_ends() -> None:
    async def failing() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("link lost")

    async def slow_to_end() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await finish_within(asyncio.sleep(0.2), 5)
            raise

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await supervise({"a": failing(), "b": slow_to_end()})
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0
