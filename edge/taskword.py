"""What the hub hears of assignments a device took: their updates (accepted, rejected,
running), each sent only once the inbox holding it is on the disk.

An accepted task the hub does not hear of is given to another device after its accept
timeout; one it heard of, only after its lease. So a word must never run ahead of the
disk: a device that lost its inbox to a power cut would hold the hub off a task nobody
runs. Updates wait for the disk in the background, so that the session takes its next
message meanwhile, and usually go with the result's synced commit, which takes the
inbox's write to the disk with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from outpost import wire
from outpost.aio import cancel_until_done

logger = logging.getLogger(__name__)

Updates = list[wire.TaskUpdate]
Notify = Callable[[Updates], Awaitable[None]]


class TaskWord:
    """Updates waiting for the disk, and the tasks whose result will tell instead."""

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self._telling: set[asyncio.Task[None]] = set()
        # Tasks whose update waits for the disk, each True once its result is being
        # appended (then the result tells the hub instead).
        self._untold: dict[str, bool] = {}

    def once_on_disk(self, on_disk: asyncio.Future[None], updates: Updates) -> None:
        """Send `updates` once `on_disk` is done, but for tasks whose result is being
        appended by then (see `answering`)."""
        for u in updates:
            self._untold[u.task_id] = False
        telling = asyncio.create_task(self._tell(on_disk, updates), name="agent.task-updates")
        self._telling.add(telling)
        telling.add_done_callback(self._telling.discard)

    def answering(self, task_id: str, appending: bool = True) -> None:
        """The result of `task_id` is being appended (or, `appending` False, its append
        failed and waits for room)."""
        if task_id in self._untold:
            self._untold[task_id] = appending

    async def close(self) -> None:
        for telling in list(self._telling):
            await cancel_until_done(telling)

    async def _tell(self, on_disk: asyncio.Future[None], updates: Updates) -> None:
        try:
            await on_disk
        finally:
            answered = {u.task_id for u in updates if self._untold.pop(u.task_id, False)}
        # A task whose result is being appended by now (usually: the result's synced
        # commit is what took the inbox's write to the disk) needs no word: its result
        # says more, and the hub ends a task held as assigned as it ends a running one.
        # The word cost the hub a transaction just as the result arrived. (Should that
        # append fail, a full stream, the hub hears nothing and gives the task to another
        # device after its accept timeout, as if this one had not taken it.)
        news = [u for u in updates if u.task_id not in answered]
        if not news:
            return
        try:
            await self.notify(news)
        except Exception as exc:  # the hub lapses or hears of them by their results
            logger.warning("task updates not sent: %s", exc)
