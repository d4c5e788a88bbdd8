"""Each sink's drain: the outbox's events after the sink's cursor, filtered by its types
and selector, published in order, the cursor moved past them once the bus has them.

One drain per sink runs on the leading replica (hub/leadership.py): its cursor moves in
fenced units of work, so a former leader that wakes up cannot move it. A paused former
leader may still publish what it had read; those events carry the same ids, which a
consumer dedupes. A sink that is down is retried with capped, jittered back-off and
holds up nothing else: ingest only writes the outbox, and each sink drains on its own.
"""

from __future__ import annotations

import asyncio
import datetime
import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hub.sinks.base import Event, EventRefusedError, Sink, SinkError
from hub.sinks.config import SinkConfig
from hub.sinks.selection import Selection
from hub.store import HubStore, outbox
from hub.store.outbox import OutboxEvent
from outpost.aio import wait_event
from outpost.backoff import Reconnect

logger = logging.getLogger(__name__)

BATCH = 500  # events read at once
# Events published between two moves of the cursor: after a crash, at most this many are
# sent again (a bus's batch of acks is still worth having).
CHUNK = 100
IDLE_POLL_S = 0.25  # an idle drain looks again this often (or when woken)
BOUNDS_EVERY_S = 10.0  # how often a drain checks that it is within its lag bounds
RETRY_CAP_S = 60.0
FAILED_RETRY_S = 300.0  # a sink whose configuration is refused (bad credentials)


@dataclass(frozen=True)
class Bounds:
    """How far a sink may fall behind before its oldest events are skipped for it."""

    max_events: int
    max_age_s: float


def event_id(row: OutboxEvent) -> str:
    """The event's CloudEvents id, the dedupe key on every bus: its outbox id, and the
    millisecond it happened. The outbox id alone would name new events as old ones after
    the database is restored from an older backup (its numbering goes back with it), and
    a consumer that drops ids it has seen would drop them; the time keeps them apart,
    while an event sent again after a crash keeps its id."""
    return f"evt-{row.id}-{round(row.at * 1000)}"


def as_event(row: OutboxEvent, source: str) -> Event:
    time_text = datetime.datetime.fromtimestamp(row.at, datetime.UTC).isoformat(
        timespec="milliseconds"
    )
    return Event(
        id=event_id(row),
        type=row.type,
        source=source,
        subject=row.subject,
        time=time_text.replace("+00:00", "Z"),
        data=row.data,
    )


class Drain:
    """Delivers one sink's events for as long as it runs (it is cancelled to stop)."""

    def __init__(
        self,
        config: SinkConfig,
        store: HubStore,
        make_sink: Callable[[SinkConfig], Sink],
        *,
        source: str,
        bounds: Bounds,
    ) -> None:
        self.config = config
        self._store = store
        self._make_sink = make_sink
        self._source = source
        self._bounds = bounds
        self._wake = asyncio.Event()
        self._selection = Selection(store, config.selector)
        self._bounds_at = float("-inf")
        self._state = ""

    def wake(self) -> None:
        """New events were written: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        name = self.config.name
        # The same drain runs again on each leadership term; meanwhile another replica
        # may have written this sink's state, so the first state of a run is written.
        self._state = ""
        retry = Reconnect(cap=RETRY_CAP_S, spread=1.0, seed=name)
        while True:  # the database away at start: this sink waits, not the hub's end
            try:
                cursor = await self._store.run(outbox.open_cursor, name, time.time())
                break
            except Exception as exc:
                wait = retry.next_delay()
                logger.warning("sink %s: no cursor yet: %s (next try in %.1f s)", name, exc, wait)
                await asyncio.sleep(wait)  # the sink's back-off, not a synchronisation
        retry.reset()
        position = cursor.position
        sink: Sink | None = None
        try:
            while True:
                try:
                    # Bounds first: a sink that cannot start (bus down, refused
                    # credentials, a configuration it cannot be made with) must not let
                    # the outbox grow without limit for it.
                    position = await self._within_bounds(position)
                    if sink is None:
                        sink = await self._started()
                        if sink is None:
                            await asyncio.sleep(FAILED_RETRY_S)  # the slowest pace
                            continue
                        retry.reset()
                    rows = await self._store.run(outbox.after, position, BATCH)
                    if not rows:
                        await self._set_state("idle", "")
                        await wait_event(self._wake, IDLE_POLL_S)
                        self._wake.clear()
                        # A replay may have moved the cursor back meanwhile.
                        stored = await self._store.run(outbox.position_of, name)
                        position = stored if stored is not None else position
                        continue
                    for first in range(0, len(rows), CHUNK):
                        chunk = rows[first : first + CHUNK]
                        moved = await self._deliver(sink, position, chunk)
                        if moved < chunk[-1].id:  # a dead letter, or a replay: read again
                            position = moved
                            break
                        position = moved
                except SinkError as exc:
                    wait = FAILED_RETRY_S if exc.permanent else retry.next_delay()
                    state = "failed" if exc.permanent else "failing"
                    logger.warning("sink %s %s: %s (next try in %.1f s)", name, state, exc, wait)
                    await self._set_state(state, str(exc), retried=1)
                    if sink is not None:
                        await sink.close()
                        sink = None
                    await asyncio.sleep(wait)  # the sink's back-off, not a synchronisation
                except Exception as exc:  # the database away, a lost lease: this sink waits
                    wait = retry.next_delay()
                    logger.warning(
                        "sink %s paused: %s (next try in %.1f s)", name, exc, wait, exc_info=True
                    )
                    await asyncio.sleep(wait)  # the sink's back-off, not a synchronisation
        finally:
            if sink is not None:
                await sink.close()

    async def _started(self) -> Sink | None:
        """The sink made and started; None (its state failed) for a configuration it
        cannot be made with. A ValueError means that here only: from publish, it is a
        fault of the moment (the loop's back-off), not a reason to wait 5 minutes."""
        try:
            sink = self._make_sink(self.config)
        except ValueError as exc:
            await self._cannot_start(exc)
            return None
        try:
            await sink.start()
        except ValueError as exc:
            await sink.close()
            await self._cannot_start(exc)
            return None
        except BaseException:  # SinkError (the loop's back-off), a cancel: no half-open sink
            await sink.close()
            raise
        return sink

    async def _cannot_start(self, exc: ValueError) -> None:
        logger.error("sink %s cannot start: %s", self.config.name, exc)
        await self._set_state("failed", str(exc))

    async def _deliver(self, sink: Sink, position: int, rows: list[OutboxEvent]) -> int:
        """Publish what the sink takes of `rows`; the cursor's new position."""
        types = self.config.types
        judged = await self._selection.judge(rows)
        wanted = [
            r
            for r, selected in zip(rows, judged, strict=True)
            if selected and any(fnmatch.fnmatchcase(r.type, p) for p in types)
        ]
        chosen = [as_event(r, self._source) for r in wanted]
        try:
            if chosen:
                await sink.publish(chosen)
        except EventRefusedError as refused:
            row = next(r for r, e in zip(wanted, chosen, strict=True) if e.id == refused.event.id)
            number = row.id
            before = [r for r in wanted if r.id < number]
            if number - 1 > position:
                await self._advance(position, number - 1, len(before))
            event, reason = refused.event, refused.reason
            moved = await self._store.run(
                lambda db: outbox.dead_letter(
                    db,
                    self.config.name,
                    event.id,
                    row,
                    event.body().decode(),
                    reason,
                    time.time(),
                    frm=number - 1,
                )
            )
            logger.warning(
                "sink %s refused %s for good (%s): kept in its dead letters",
                self.config.name,
                event.id,
                reason,
            )
            if moved:
                return number
            # A replay moved the cursor meanwhile: go on from where it is now.
            cursor = await self._store.run(outbox.open_cursor, self.config.name, time.time())
            return cursor.position
        return await self._advance(position, rows[-1].id, len(chosen))

    async def _advance(self, position: int, to: int, delivered: int) -> int:
        moved = await self._store.run(
            outbox.advance, self.config.name, position, to, delivered, time.time()
        )
        self._state = "delivering"
        if moved:
            return to
        # Someone moved the cursor meanwhile (a replay): go on from where it is now.
        cursor = await self._store.run(outbox.open_cursor, self.config.name, time.time())
        return cursor.position

    async def _within_bounds(self, position: int) -> int:
        """Skip, counted, what is beyond the sink's bounds (by count, then by age)."""
        if time.monotonic() - self._bounds_at < BOUNDS_EVERY_S:
            return position
        self._bounds_at = time.monotonic()
        newest, _ = await self._store.run(outbox.head)
        floor = newest - self._bounds.max_events
        oldest = await self._store.run(outbox.oldest_after, position)
        if oldest is not None and oldest < time.time() - self._bounds.max_age_s:
            by_age = await self._store.run(
                outbox.first_at_or_after, time.time() - self._bounds.max_age_s
            )
            floor = max(floor, by_age - 1)
        if floor <= position:
            return position
        skipped = await self._store.run(outbox.count_between, position, floor)
        await self._store.run(outbox.skip_to, self.config.name, floor, int(skipped), time.time())
        logger.error(
            "sink %s fell behind its bounds: %d events skipped for it (overflowed)",
            self.config.name,
            skipped,
        )
        self._state = "overflowed"
        return floor

    async def _set_state(self, state: str, error: str, *, retried: int = 0) -> None:
        if state == self._state and not retried:
            return
        self._state = state
        await self._store.run(
            lambda db: outbox.set_state(
                db, self.config.name, state, error, time.time(), retried=retried
            )
        )
