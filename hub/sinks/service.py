"""The hub's sinks: a drain per configured sink (on the leader), the outbox kept
bounded, and each sink's state and counts for the API and /metrics."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.sinks.base import Sink
from hub.sinks.config import SinkConfig, shown
from hub.sinks.drain import Bounds, Drain
from hub.store import HubStore, outbox
from hub.store.outbox import SinkCursor

logger = logging.getLogger(__name__)

PRUNE_EVERY_S = 60.0
DEAD_LETTERS_PER_SINK = 10_000  # the newest kept; older ones go (and after their keep)
STATUS_EVERY_S = 5.0  # /metrics shows the sinks as of at most this long ago


# Each kind's class, imported when a sink of that kind is made: a hub without a NATS
# sink never loads nats-py.
KINDS: dict[str, str] = {
    "webhook": "hub.sinks.webhook:WebhookSink",
    "nats": "hub.sinks.nats:NatsSink",
    "rabbitmq": "hub.sinks.rabbitmq:RabbitSink",
}


def make_sink(config: SinkConfig) -> Sink:
    """The sink a configuration names."""
    module, name = KINDS[config.kind].split(":")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:  # an install without the bus's library
        raise ValueError(
            f"sink {config.name}: a {config.kind} sink needs the {exc.name} package, which "
            "this install lacks"
        ) from exc
    sink: Sink = getattr(loaded, name)(config)
    return sink


@dataclass(frozen=True)
class SinkStatus:
    """A sink as the API and /metrics show it."""

    name: str
    kind: str
    url: str
    state: str  # starting, delivering, idle, failing, failed, overflowed; unknown: never ran
    error: str
    position: int
    lag_events: int
    lag_seconds: float
    delivered: int
    retried: int
    dead_lettered: int
    overflowed: int
    updated_at: float | None


async def statuses(store: HubStore, configs: list[SinkConfig]) -> list[SinkStatus]:
    """Every configured sink's state, from the database (any replica can answer)."""
    now = time.time()
    newest, _ = await store.run(outbox.head)
    found: dict[str, SinkCursor] = {c.sink: c for c in await store.run(outbox.cursors)}
    out = []
    for config in configs:
        cursor = found.get(config.name)
        position = cursor.position if cursor else newest
        oldest = await store.run(outbox.oldest_after, position) if cursor else None
        out.append(
            SinkStatus(
                name=config.name,
                kind=config.kind,
                url=shown(config.url),  # a viewer sees no credential a webhook's URL carries
                state=cursor.state if cursor else "unknown",
                error=cursor.error if cursor else "",
                position=position,
                lag_events=max(0, newest - position),
                lag_seconds=max(0.0, now - oldest) if oldest is not None else 0.0,
                delivered=cursor.delivered if cursor else 0,
                retried=cursor.retried if cursor else 0,
                dead_lettered=cursor.dead_lettered if cursor else 0,
                overflowed=cursor.overflowed if cursor else 0,
                updated_at=cursor.updated_at if cursor else None,
            )
        )
    return out


class SinkService:
    """Runs the drains (cancelled when this replica stops leading) and keeps the outbox
    bounded; `collector` shows the sinks on /metrics."""

    def __init__(
        self,
        configs: list[SinkConfig],
        store: HubStore,
        *,
        source: str,
        keep_s: float,
        bounds: Bounds,
        dead_letters_keep_s: float = 30 * 86400.0,
    ) -> None:
        self.configs = configs
        self._store = store
        self._keep_s = keep_s
        self._dead_letters_keep_s = dead_letters_keep_s
        self.drains = [Drain(c, store, make_sink, source=source, bounds=bounds) for c in configs]
        self.collector = SinkCollector()

    def wake(self) -> None:
        for drain in self.drains:
            drain.wake()

    async def run(self) -> None:
        if not self.drains:
            await asyncio.Event().wait()  # no sinks: nothing to drain, nothing to prune
        try:
            async with asyncio.TaskGroup() as group:
                for drain in self.drains:
                    group.create_task(drain.run(), name=f"hub.sinks.{drain.config.name}")
                group.create_task(self._upkeep(), name="hub.sinks.upkeep")
        finally:
            # No longer leading: the new leader shows the sinks; stale figures here would
            # keep an alert firing on this replica.
            self.collector.statuses = []

    async def _upkeep(self) -> None:
        pruned_at = time.monotonic()
        while True:
            # Apart: whatever keeps the figures from being read must not keep the outbox
            # from being pruned, nor the reverse.
            try:
                self.collector.statuses = await statuses(self._store, self.configs)
            except Exception as exc:  # the database is away: the next round tries again
                logger.warning("sink upkeep: cannot read the sinks' states: %s", exc)
            if time.monotonic() - pruned_at > PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                try:
                    await self._prune()
                except Exception as exc:  # the database is away: the next round tries again
                    logger.warning("sink upkeep: cannot prune the outbox: %s", exc)
            await asyncio.sleep(STATUS_EVERY_S)  # a period, not a synchronisation

    async def _prune(self) -> None:
        """Drop delivered events past their keep, and dead letters past theirs."""
        names = [c.name for c in self.configs]
        gone = await self._store.run(outbox.prune, names, self._keep_s, time.time())
        if gone:
            logger.debug("outbox: %d delivered events pruned", gone)
        gone = await self._store.run(
            outbox.prune_dead_letters,
            self._dead_letters_keep_s,
            DEAD_LETTERS_PER_SINK,
            time.time(),
        )
        if gone:
            logger.info("sinks: %d dead letters past their keep pruned", gone)


class SinkCollector(Collector):
    """The sinks' figures on /metrics, as of the last upkeep round."""

    def __init__(self) -> None:
        self.statuses: list[SinkStatus] = []

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "outpost_hub_sink_lag_events", "Events a sink has yet to deliver", labels=["sink"]
        )
        lag_s = GaugeMetricFamily(
            "outpost_hub_sink_lag_seconds",
            "Age of the oldest event a sink has yet to deliver",
            labels=["sink"],
        )
        up = GaugeMetricFamily(
            "outpost_hub_sink_up",
            "1 while a sink delivers or is idle; 0 while it fails or overflowed",
            labels=["sink", "state"],
        )
        counters = {
            name: CounterMetricFamily(
                f"outpost_hub_sink_{name}", f"Events a sink {what}", labels=["sink"]
            )
            for name, what in (
                ("delivered", "delivered"),
                ("retried", "failed to deliver and retried (attempts)"),
                ("dead_lettered", "refused for good (kept in its dead letters)"),
                ("overflowed", "skipped, being beyond its lag bounds"),
            )
        }
        for s in self.statuses:
            lag.add_metric([s.name], s.lag_events)
            lag_s.add_metric([s.name], s.lag_seconds)
            up.add_metric([s.name, s.state], 1.0 if s.state in ("delivering", "idle") else 0.0)
            counters["delivered"].add_metric([s.name], s.delivered)
            counters["retried"].add_metric([s.name], s.retried)
            counters["dead_lettered"].add_metric([s.name], s.dead_lettered)
            counters["overflowed"].add_metric([s.name], s.overflowed)
        yield lag
        yield lag_s
        yield up
        yield from counters.values()
