"""What the agent says about itself: heartbeats while connected, a metrics roll-up every
interval whether connected or not, and events; each samples the device's load.

No MQTT here: the session hands `heartbeats` the way to send one on its connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge import rollup
from edge.metrics_window import MetricsWindow
from edge.parts import AgentParts
from edge.store import StoreReadError, StoreWriteError, StreamFullError
from edge.sysinfo import LoadSampler
from edge.tuning import Tuning
from outpost import aio, wire
from outpost.sqlite import StoreClosedError

logger = logging.getLogger(__name__)

# The model inventory rides a heartbeat again after this long even when unchanged.
MODELS_REFRESH_S = 60.0

# How long a stop waits for the last roll-up (stats, the store's append, the window's
# file): milliseconds on a quiet disk, and a small part of systemd's 30 s to stop.
LAST_WINDOW_S = 5.0

SendBeat = Callable[[wire.Heartbeat], Awaitable[None]]


class Telemetry:
    """Heartbeats, metrics roll-ups and events of one running agent."""

    def __init__(
        self,
        parts: AgentParts,
        tuning: Tuning,
        sampler: LoadSampler,
        *,
        metrics_window: Path,
        started: float,
    ) -> None:
        self._parts = parts
        self._tuning = tuning  # its intervals are read at each turn: a policy changes them
        self._sampler = sampler
        self._metrics_window = metrics_window
        self._started = started
        # The load of the last heartbeat or roll-up; None before the first, when the
        # policy's caps refuse nothing (the load is unknown).
        self.last_load: wire.Load | None = None
        # The inventory last sent (None: none yet on this run) and when.
        self._models_reported: list[wire.ModelInfo] | None = None
        self._models_reported_at = 0.0

    async def event(self, name: str, **details: Any) -> None:
        """Record an event on the events stream; a full or failing disk only logs it."""
        try:
            await self._parts.store.append("events", [{"event": name, **details}])
        except (StreamFullError, StoreWriteError) as exc:
            logger.warning("event %s not recorded: %s", name, exc.reason)

    def models_for_hello(self) -> list[wire.ModelInfo]:
        """Return the inventory, as sent in a hello: heartbeats then carry it only when it
        changes (see `_models_if_changed`)."""
        self._models_reported = self._parts.inference.inventory()
        self._models_reported_at = time.monotonic()
        return self._models_reported

    async def heartbeats(self, conn: str, send: SendBeat) -> None:
        """Send a heartbeat every interval, for the life of connection `conn`."""
        while True:
            # Looked at again each second, as the metrics loop does: a policy that shortens
            # the interval (or whose applying the hub waits to hear of) does not wait out
            # the old one, up to a day.
            last = time.monotonic()
            while (left := last + self._tuning.heartbeat_interval - time.monotonic()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(min(left, 1.0))
            try:
                beat = await self.heartbeat(conn, models=self._models_if_changed())
            except (OSError, StoreReadError) as exc:  # a failing disk must not end the link
                logger.warning("heartbeat skipped: %s", exc)
                continue
            await send(beat)

    async def heartbeat(
        self, conn: str, *, models: list[wire.ModelInfo] | None = None
    ) -> wire.Heartbeat:
        """What a heartbeat says now: for the link, and for a courier bundle (which has
        no connection: `conn` names it). Raises OSError or StoreReadError."""
        parts = self._parts
        load = await asyncio.to_thread(self._sampler.sample)
        stats = await parts.store.stats()
        self.last_load = load
        return wire.Heartbeat(
            conn=conn,
            uptime_s=time.monotonic() - self._started,
            heartbeat_interval=self._tuning.heartbeat_interval,
            load=load,
            store=store_report(stats),
            models=models,
            tasks=parts.tasks.load(),
            policy=parts.policy.report(),
        )

    def _models_if_changed(self) -> list[wire.ModelInfo] | None:
        """Return the inventory when it differs from the last one reported (hello always
        carries it), and again every `MODELS_REFRESH_S`: heartbeats stay small on metered
        links, and a report the hub lost (a replica died holding it) is repaired soon."""
        current = self._parts.inference.inventory()
        now = time.monotonic()
        if current == self._models_reported and now - self._models_reported_at < MODELS_REFRESH_S:
            return None
        self._models_reported, self._models_reported_at = current, now
        return current

    async def rollups(self) -> None:
        """Write one roll-up to the metrics stream every interval, online or not: the
        device's load, store fill, task counts, errors and per-model inference counts.

        The window's start outlives the process (`MetricsWindow`): an agent restarted
        more often than the interval still rolls up. After a kill the first roll-up
        closes out the window the killed process began, with its period since then, but
        only what is measured at roll-up time (load, store fill, queue depths) and what
        this process counted: the killed one's inference and task counts were in memory,
        and are lost. A graceful stop writes the partial window's roll-up instead."""
        store, inference, tasks = self._parts.store, self._parts.inference, self._parts.tasks
        window = MetricsWindow(self._metrics_window)
        await asyncio.to_thread(window.resume)
        done = failed = 0  # the task runner's totals at the last roll-up

        async def measure() -> dict[str, Any] | None:
            """Return the roll-up of the window so far, which closes it; None if the device
            or the store could not be read (the window stays open, counts carry on)."""
            nonlocal done, failed
            try:
                load = await asyncio.to_thread(self._sampler.sample)
                stats = await store.stats()
            except (OSError, StoreReadError) as exc:
                logger.warning("metrics roll-up skipped: %s", exc)
                return None
            self.last_load = load
            counts = {
                "done": tasks.done - done,
                "failed": tasks.failed - failed,
                "queued": tasks.queued,
                "running": tasks.running,
            }
            done, failed = tasks.done, tasks.failed
            models, errors = inference.tally.take()
            return rollup.record(
                period_s=window.close(),
                load=load,
                store=stats,
                tasks=counts,
                models=models,
                errors=errors,
                shadow=inference.tally.take_shadow(),
            )

        async def keep(record: dict[str, Any]) -> bool:
            """Store the roll-up; return False if the disk refused it."""
            try:
                await store.append("metrics", [record])
            except StreamFullError as exc:  # only one larger than the whole stream's bound
                logger.warning("metrics roll-up not recorded: %s", exc.reason)
                return False
            except StoreWriteError as exc:  # a full or failing disk must not stop the agent
                logger.warning("metrics roll-up not recorded: %s", exc.reason)
                return False
            return True

        async def close_window() -> None:
            record = await measure()
            if record is not None and await keep(record):
                await asyncio.to_thread(window.forget)

        try:
            while True:
                # Looked at again every second: a policy that shortens the interval
                # applies now, not after the longer wait already begun.
                while (wait := window.due_in(self._tuning.metrics_interval)) > 0:  # noqa: ASYNC110
                    await asyncio.sleep(min(wait, 1.0))
                record = await measure()
                if record is None:
                    await asyncio.sleep(self._tuning.metrics_interval)  # not again at once
                    continue
                await keep(record)
                for disagreement in inference.shadows.take_disagreements():
                    await self.event("shadow.disagreement", **disagreement)
                # Only after the record is stored: a kill in between makes the next
                # process close this window again (its period counted twice, no counts).
                await asyncio.to_thread(window.save)
        except asyncio.CancelledError:
            # The agent stops: supervise cancels this task before `run` closes the store,
            # so the partial window can still be written, through the shutdown's further
            # cancels (a slow disk's stats and append outlast the half second between
            # them). Past `LAST_WINDOW_S` the kept window stays for the next start to
            # close out, as after a kill, without the counts of its end.
            try:
                await aio.finish_within(close_window(), LAST_WINDOW_S)
            except StoreClosedError:
                pass  # the shutdown went on without it
            except TimeoutError:
                logger.warning(
                    "the last metrics window was not written within %g s: the next start "
                    "closes it without its counts",
                    LAST_WINDOW_S,
                )
            raise


def store_report(stats: dict[str, Any]) -> wire.StoreReport:
    """Return the heartbeat's view of the store's `stats`."""
    return wire.StoreReport(
        streams={
            name: wire.StreamFill(
                records=f["records"],
                bytes=f["bytes"],
                oldest_ts=f["oldest_ts"],
                fill=round(f["fill"], 4),
            )
            for name, f in stats["streams"].items()
        },
        counters={k: int(v) for k, v in stats["counters"].items()},
        bytes_written_per_record=float(stats["bytes_written_per_record"]),
    )
