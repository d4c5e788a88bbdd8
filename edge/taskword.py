"""What the hub hears of assignments a device took: their updates (accepted, rejected,
running), each sent only once the inbox holding it is on the disk, and a claimed task's
"running" only once it has run for `RUNNING_WORD_AFTER_S` (and its put is on the disk).

An accepted task the hub does not hear of is given to another device after its accept
timeout; one it heard of, only after its lease. So a word must never run ahead of the
disk: a device that lost its inbox to a power cut would hold the hub off a task nobody
runs. Updates wait for the disk in the background, so that the session takes its next
message meanwhile, and usually go with the result's synced commit, which takes the
inbox's write to the disk with it. A task whose result is being appended by the time
its word is due needs no word: its result says more (see `_tell`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from outpost import wire
from outpost.aio import cancel_until_done

logger = logging.getLogger(__name__)

Updates = list[wire.TaskUpdate]
Notify = Callable[[Updates], Awaitable[None]]

# "running" is the hub's and the operator's view of a task, nothing decides on it; a
# task that ends sooner than this is told by its result alone, one message and one
# transaction at the hub fewer for each of a busy device's tasks.
RUNNING_WORD_AFTER_S = 0.1


class TaskWord:
    """Updates waiting for the disk, and the tasks whose result will tell instead."""

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self._telling: set[asyncio.Task[None]] = set()
        # Tasks whose update waits for the disk, each True once its result is being
        # appended (then the result tells the hub instead); and how many words of each
        # wait (an "accepted" may still wait when its claim's "running" is decided).
        self._untold: dict[str, bool] = {}
        self._waiting: collections.Counter[str] = collections.Counter()
        # The sync each task's put waits for, while its word waits for it.
        self._puts: dict[str, asyncio.Future[None]] = {}

    def once_on_disk(self, on_disk: asyncio.Future[None], updates: Updates) -> None:
        """Send `updates` (of a put) once `on_disk` is done, but for tasks whose result
        is being appended by then (see `answering`)."""
        for u in updates:
            self._puts[u.task_id] = on_disk
        self._schedule(lambda: on_disk, updates)

    def once_running(self, updates: Updates) -> None:
        """Send "running" `updates` of claimed tasks after `RUNNING_WORD_AFTER_S`, and not
        before their puts are on the disk, but for those whose result is being appended
        by then. (The claim's own commit need not be on the disk: one a power cut takes
        back leaves its tasks pending, to run again, as the restart of a kept one does.
        A put that a power cut takes back leaves nothing, which the hub must not hear as
        "running".)"""
        puts = {f for u in updates if (f := self._puts.get(u.task_id)) and not f.done()}
        self._schedule(lambda: _running_due(puts), updates)

    def _schedule(self, due: Callable[[], Awaitable[None]], updates: Updates) -> None:
        """Send `updates` once `due()` is done (made in the telling task: one cancelled
        before it ran leaves nothing unawaited)."""
        for u in updates:
            self._untold.setdefault(u.task_id, False)
            self._waiting[u.task_id] += 1
        telling = asyncio.create_task(self._tell(due, updates), name="agent.task-updates")
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

    async def _tell(self, due: Callable[[], Awaitable[None]], updates: Updates) -> None:
        try:
            await due()
        finally:
            answered = {u.task_id for u in updates if self._untold.get(u.task_id, False)}
            for u in updates:
                self._waiting[u.task_id] -= 1
                if self._waiting[u.task_id] <= 0:
                    del self._waiting[u.task_id]
                    self._untold.pop(u.task_id, None)
                    self._puts.pop(u.task_id, None)
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


async def _running_due(puts: set[asyncio.Future[None]]) -> None:
    """`RUNNING_WORD_AFTER_S` from now, and `puts` on the disk (shielded: other words
    wait for them too, and a word cancelled at close must not cancel theirs)."""
    await asyncio.sleep(RUNNING_WORD_AFTER_S)
    for put in puts:
        await asyncio.shield(put)
