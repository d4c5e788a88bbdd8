"""Which replica runs the singleton work (allocation passes, the liveness sweep), and the
fence that stops a former leader from doing it.

With one hub on SQLite there is nothing to elect: it always leads. Replicas on
PostgreSQL claim a lease in the database (store/leadership.py) every `RENEW_S`; the
holder leads while its last renewal is younger than the lease minus a margin, so it
stops before another can take over, and the units of work it runs as leader check the
lease and its epoch inside their own transaction (`fence`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hub.store import HubStore
from hub.store import leadership as lease
from hub.store.sql import Sql
from outpost.aio import cancel_until_done

logger = logging.getLogger(__name__)

LEASE_S = 3.0  # a dead leader's work resumes elsewhere within about this long
RENEW_S = 0.75
MARGIN_S = 0.75  # a leader stops this long before its lease could lapse


class Leadership:
    """This replica's part in electing the leader, and running work only while leading."""

    def __init__(
        self,
        store: HubStore,
        holder: str,
        *,
        elect: bool,
        lease_s: float = LEASE_S,
        renew_s: float = RENEW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        # One name per process, not per replica: a replica restarted while its former
        # self's lease still runs must not inherit it (nor its epoch, which would let a
        # paused former process pass the fence). It waits for the lapse like any other.
        self.holder = f"{holder}@{secrets.token_hex(4)}" if elect else holder
        self._elect = elect  # False: the only hub, always the leader
        self._lease_s = lease_s
        self._renew_s = renew_s
        self._clock = clock
        self.epoch = 0
        self.changes = 0  # times this replica became leader
        self._valid_until = float("inf") if not elect else 0.0
        self._changed = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self._clock() < self._valid_until

    def fence(self, db: Sql) -> None:
        """Inside a unit of work: raise `NotLeaderError` unless this replica still leads."""
        if self._elect:
            lease.check_fence(db, self.holder, self.epoch)

    async def run(self) -> None:
        """Claim and renew the lease for as long as the hub runs; give it up on the way out."""
        if not self._elect:
            self._changed.set()
            await asyncio.Event().wait()
        try:
            while True:
                started = self._clock()
                was = self.leading
                try:
                    claimed = await self._store.run_apart(lease.claim, self.holder, self._lease_s)
                except Exception as exc:  # the database is away: lead until the lease ends
                    logger.warning("could not renew the leadership lease: %s", exc)
                else:
                    if claimed is None:
                        self._valid_until = 0.0  # another replica holds it
                    else:
                        if claimed.epoch != self.epoch or not was:
                            self.changes += 1
                            logger.info("%s leads (epoch %d)", self.holder, claimed.epoch)
                        self.epoch = claimed.epoch
                        # From before the claim: the lease may be older than our read.
                        self._valid_until = started + self._lease_s - MARGIN_S
                if was and not self.leading:
                    logger.warning("%s no longer leads", self.holder)
                if was != self.leading:
                    self._changed.set()
                await asyncio.sleep(self._renew_s)
        finally:
            if self._elect and self.leading:
                self._valid_until = 0.0
                try:
                    await asyncio.shield(
                        self._store.run_apart(lease.release, self.holder, self.epoch)
                    )
                except Exception as exc:  # others take over when the lease lapses
                    logger.debug("could not give up the lease: %s", exc)

    async def while_leading(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work()` whenever this replica leads; cancel it when it stops leading."""
        while True:
            while not self.leading:
                self._changed.clear()
                await self._wait_change()
            task = asyncio.create_task(work())
            try:
                while self.leading and not task.done():
                    self._changed.clear()
                    waiter = asyncio.ensure_future(self._wait_change())
                    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
            finally:
                await cancel_until_done(task)
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _wait_change(self) -> None:
        # A lease can also end with no renewal happening (the database hangs): look at
        # least as often as the lease is renewed.
        try:
            async with asyncio.timeout(self._renew_s):
                await self._changed.wait()
        except TimeoutError:
            pass
