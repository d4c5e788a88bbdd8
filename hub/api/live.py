"""One snapshot per tick, shared by every listener of the live stream.

The feed runs only while someone listens: the first listener starts its task, the last
one to leave stops it. However many dashboards are open, each tick costs one read of the
store; a slow listener is never waited for, it simply gets the newest snapshot when it
is ready (each listener holds one snapshot at most).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

logger = logging.getLogger(__name__)


class FeedFullError(Exception):
    """Too many listeners already; try again later."""


class FeedClosedError(Exception):
    """The feed is shutting down."""


class Listener:
    """One open stream: waits for the next snapshot."""

    def __init__(self) -> None:
        self._latest: bytes | None = None
        self._ready = asyncio.Event()
        self.closed = False

    def offer(self, frame: bytes) -> None:
        self._latest = frame  # an unread older snapshot is replaced, never queued
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> bytes | None:
        """The next snapshot, or None once the feed closed."""
        await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return None
        frame, self._latest = self._latest, None
        assert frame is not None
        return frame


class LiveFeed:
    """Builds a snapshot every `interval` seconds while anyone listens.

    Listeners are capped in all (`max_listeners`), per token subject (`per_subject`: one
    token cannot take every slot), and `reserved` slots are kept for operators and
    admins, so viewers' streams can never lock them out of the dashboard.
    """

    def __init__(
        self,
        build: Callable[[], Awaitable[bytes]],
        *,
        interval: float,
        max_listeners: int,
        per_subject: int = 4,
        reserved: int = 8,
    ) -> None:
        if interval <= 0 or max_listeners < 1 or not 0 <= reserved < max_listeners:
            raise ValueError(
                "interval must be positive, max_listeners at least 1 and above reserved"
            )
        self._build = build
        self._interval = interval
        self._max = max_listeners
        self._per_subject = per_subject
        self._reserved = reserved
        self._by_subject: collections.Counter[str] = collections.Counter()
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._latest: bytes | None = None
        self._closed = False

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @contextlib.asynccontextmanager
    async def listen(
        self, subject: str = "", *, privileged: bool = False
    ) -> AsyncIterator[Listener]:
        """Register a listener for `subject` (a token's subject) for as long as the block
        runs; `privileged` listeners (operators, admins) may use the reserved slots.

        Raises `FeedFullError` when the caps are reached, `FeedClosedError` after
        `close`."""
        if self._closed:
            raise FeedClosedError("the feed is closed")
        cap = self._max if privileged else self._max - self._reserved
        if len(self._listeners) >= cap:
            raise FeedFullError(f"{len(self._listeners)} streams are open already")
        if self._by_subject[subject] >= self._per_subject:
            raise FeedFullError(f"this token has {self._per_subject} streams open already")
        listener = Listener()
        self._listeners.add(listener)
        self._by_subject[subject] += 1
        if self._latest is not None:
            listener.offer(self._latest)  # something to show at once
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hub.live-feed")
        try:
            yield listener
        finally:
            self._listeners.discard(listener)
            self._by_subject[subject] -= 1
            if not self._by_subject[subject]:
                del self._by_subject[subject]
            if not self._listeners:
                await self._stop()

    async def snapshot(self) -> bytes:
        """The latest snapshot if the feed is running, else a fresh one."""
        if self._task is not None and self._latest is not None:
            return self._latest
        return await self._build()

    async def close(self) -> None:
        """End every stream and stop (the web server calls this before it stops)."""
        self._closed = True
        for listener in list(self._listeners):
            listener.close()
        await self._stop()

    async def _stop(self) -> None:
        task, self._task = self._task, None
        self._latest = None  # a later listener must not see a stale picture
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                frame = await self._build()
            except Exception:  # one failed tick must not end every stream
                logger.exception("could not build the live snapshot")
            else:
                self._latest = frame
                for listener in self._listeners:
                    listener.offer(frame)
            await asyncio.sleep(self._interval)
