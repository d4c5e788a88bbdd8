"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger(__name__)


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


def taken(future: asyncio.Future[Any]) -> None:
    """Read a finished future's exception, so that asyncio does not report it as never
    retrieved when no one else will (also as a done callback)."""
    if future.done() and not future.cancelled():
        future.exception()


async def cancel_until_done(task: asyncio.Task[Any], *, every: float = 0.5) -> None:
    """Cancel `task`, and again every `every` seconds until it has finished.

    A library that waits with `asyncio.wait_for` (aiomqtt does, for each publish and for
    its disconnect) can swallow a cancel on Python 3.11 when what it waits for completes
    at the same moment; asking again is how a shutdown still ends.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every)


async def supervise(children: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run `children` (by task name) until one fails or the caller is cancelled.

    The first failure is raised as itself, not in a group; others are logged as warnings. On the way
    out every child is cancelled until it has finished: not a TaskGroup, which cancels
    each child once, so that a child whose cancel a library swallowed cannot hold a
    shutdown forever.
    """
    tasks = [asyncio.create_task(coro, name=name) for name, coro in children.items()]
    first: BaseException | None = None
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task in done and task.exception() is not None:
                first = task.exception()
                raise first  # type: ignore[misc]
    finally:
        for task in tasks:
            await cancel_until_done(task)
        for task in tasks:
            error = None if task.cancelled() else task.exception()
            if error is not None and error is not first:
                # Often the same fault seen twice (a lost link ends every reader of it):
                # the caller reports the first; these are context.
                logger.warning("%s also ended: %r", task.get_name(), error)
