"""Series about this hub process as one of several replicas: whether it leads, how often
its units of work lost a race on the database, the assignments it made and the device
messages it took from the broker but has not stored yet (the lag an autoscaler reads)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class ReplicaCollector(Collector):
    def __init__(
        self,
        *,
        leading: Callable[[], bool],
        conflicts: Callable[[], int],
        assigned: Callable[[], int],
        intake_queued: Callable[[], int],
    ) -> None:
        self._leading = leading
        self._conflicts = conflicts
        self._assigned = assigned
        self._intake_queued = intake_queued

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily(
            "outpost_hub_leader",
            "1 while this hub process runs the singleton work (allocation, sweeps); a "
            "single hub always does, replicas elect one through the database",
        )
        leader.add_metric([], 1 if self._leading() else 0)
        yield leader
        conflicts = CounterMetricFamily(
            "outpost_hub_db_conflicts",
            "Units of work run again because a concurrent one (another replica) won "
            "(PostgreSQL serialization failures and deadlocks; always 0 on SQLite)",
        )
        conflicts.add_metric([], self._conflicts())
        yield conflicts
        assigned = CounterMetricFamily(
            "outpost_hub_tasks_assigned", "Task assignments this hub process made"
        )
        assigned.add_metric([], self._assigned())
        yield assigned
        queued = GaugeMetricFamily(
            "outpost_hub_intake_queued",
            "Device messages taken from the broker and not yet stored: a replica falling "
            "behind (scale out on it)",
        )
        queued.add_metric([], self._intake_queued())
        yield queued
