"""wait_event: set, timed out, and cancelled even when the event is set at that moment."""

from __future__ import annotations

import asyncio

import pytest

from outpost.aio import wait_event


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
        await asyncio.sleep(0)
        event.set()
        task.cancel()  # in the same step as the set: the race wait_for loses
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
