"""A model runner's worker threads, handed work straight from the event loop.

A hop through `loop.run_in_executor` passes through a concurrent.futures Future chained
to an asyncio one (locks and callbacks on both sides): a no-op took 36 µs p50 that way
on a 2-core x86 machine, against 19 µs through a queue the workers take from and
`call_soon_threadsafe` setting the caller's own future. A model that is not run inline
pays the hop on every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class Workers:
    """`count` threads named `name`_N, started at the first job; each runs jobs in turn."""

    def __init__(
        self, count: int, name: str, initializer: Callable[[], None] | None = None
    ) -> None:
        self._count = count
        self._name = name
        self._initializer = initializer
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._shut = False

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn(*args)` on a worker; a future of the running loop for its outcome."""
        if self._shut:
            raise RuntimeError(f"{self._name}: the workers are shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._threads:  # an inline model may never need them
            self._threads = [
                threading.Thread(target=self._work, name=f"{self._name}_{n}", daemon=True)
                for n in range(self._count)
            ]
            for thread in self._threads:
                thread.start()
        self._jobs.put((loop, future, fn, args))
        return future

    def shutdown(self, *, wait: bool = True) -> None:
        """Let the jobs already given finish, then stop the threads; with `wait`, block
        until they have (without, a long job does not hold up the caller)."""
        self._shut = True
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        self._threads = []

    def _work(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            if future.cancelled():  # its caller gave up before it started: skip it
                del job, future, fn, args
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # the caller's to handle, as an executor does
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # its loop closed: no one waits
                loop.call_soon_threadsafe(_settle, future, result, error)
            del job, future, fn, args, result, error  # not held while it waits for the next


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def lowest_priority() -> None:
    """Run this thread at nice 19: Linux schedules threads one by one, so a background
    runner's interpreter takes only CPU time the live path leaves (lowering one's own
    priority needs no privilege)."""
    # Not Linux, or refused: it then competes as an equal.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
