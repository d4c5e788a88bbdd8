"""wait_event: set, timed out, and cancelled even when the event is set at that moment;
supervise: a failure is raised as itself, and a child that swallows a cancel still ends."""

from __future__ import annotations

import asyncio

import pytest

from outpost.aio import supervise, wait_event


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
