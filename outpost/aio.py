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
