"""Small asyncio helpers."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; return whether it was set.

    `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11, `wait_for` can swallow a
    cancellation that lands as the event is set, and a loop around it then never stops
    (a hub that hangs on shutdown).
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_until_done(task: asyncio.Task[object], *, every: float = 2.0) -> None:
    """Cancel `task`, and again every `every` seconds until it has finished.

    A library that waits with `asyncio.wait_for` (aiomqtt does, for each publish and for
    its disconnect) can swallow a cancel on Python 3.11 when what it waits for completes
    at the same moment; asking again is how a shutdown still ends.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)
