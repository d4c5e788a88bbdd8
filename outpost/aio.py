"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How long a stop waits for `supervise`'s children to end, however often it is asked
# again: well within systemd's TimeoutStopSec (30 s) for the units' whole stop.
STOP_GRACE_S = 10.0


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


async def finish_within(aw: Awaitable[T], seconds: float) -> T:
    """Await `aw` to its end though the calling task is cancelled meanwhile, for at most
    `seconds`: a last write on the way out must not be cut by the shutdown's next cancel
    (`cancel_until_done` asks again every half second, and a slow disk takes longer).

    Its own error is raised as itself. A cancel that came meanwhile is raised once it
    has ended (never lost: a one-shot cancel, a timeout's, is not asked again). Out of
    time, it is cancelled and `TimeoutError` raised: the caller's `Task.cancelling()`
    still counts any cancel that came."""
    task = asyncio.ensure_future(aw)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    cancelled = False
    while not task.done() and (left := deadline - loop.time()) > 0:
        try:
            await asyncio.wait({task}, timeout=left)
        except asyncio.CancelledError:
            cancelled = True  # the shutdown asking again: the write goes on
    if not task.done():
        task.cancel()
        task.add_done_callback(taken)
        raise TimeoutError(f"not finished within {seconds:g} s")
    if cancelled:
        taken(task)
        raise asyncio.CancelledError
    return task.result()


async def supervise(children: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run `children` (by task name) until one fails or the caller is cancelled.

    The first failure is raised as itself, not in a group; others are logged as warnings.
    On the way out every child is cancelled until it has finished: not a TaskGroup, which
    cancels each child once, so that a child whose cancel a library swallowed cannot hold
    a shutdown forever. The caller's own further cancels (a stop asks again every half
    second) wait for that, up to `STOP_GRACE_S`, and are raised after: a child's last
    write (the agent's final metrics roll-up) must not be cut off. Past the grace, the
    children still running are cancelled once more and left.
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
        await _stop(tasks, first)


async def _stop(tasks: list[asyncio.Task[None]], first: BaseException | None) -> None:
    """End `tasks` for `supervise`; raise a cancel of the caller that came meanwhile."""
    current = asyncio.current_task()
    asked = current.cancelling() if current is not None else 0
    try:
        await finish_within(_cancel_each(tasks), STOP_GRACE_S)
    except TimeoutError:
        left = [task for task in tasks if not task.done()]
        names = ", ".join(task.get_name() for task in left)
        logger.warning("%s still running %g s after asked to stop: left", names, STOP_GRACE_S)
        for task in left:
            task.cancel()
            task.add_done_callback(taken)
    except asyncio.CancelledError:
        pass  # the caller asked again while they ended: raised below, after the report
    for task in tasks:
        error = None if not task.done() or task.cancelled() else task.exception()
        if error is not None and error is not first:
            # Often the same fault seen twice (a lost link ends every reader of it):
            # the caller reports the first; these are context.
            logger.warning("%s also ended: %r", task.get_name(), error)
    if current is not None and current.cancelling() > asked:
        raise asyncio.CancelledError  # the caller's: it wins over a child's failure


async def _cancel_each(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:  # in order: a child may need those after it until it has ended
        await cancel_until_done(task)
