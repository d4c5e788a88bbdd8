"""Series about this hub process as one of several replicas: whether it leads, how often
its units of work lost a race on the database, the assignments it made and the device
messages it took from the broker but has not stored yet (the lag an autoscaler reads),
and the state of its link to the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# Every state is a series (0 or 1), so an alert can ask for `state="unlisted"` == 1.
BROKER_LINK_STATES = ("starting", "connected", "disconnected", "unlisted")


class ReplicaCollector(Collector):
    def __init__(
        self,
        *,
        leading: Callable[[], bool],
        conflicts: Callable[[], int],
        assigned: Callable[[], int],
        intake_queued: Callable[[], int],
        broker_link: Callable[[], str],
    ) -> None:
        self._leading = leading
        self._conflicts = conflicts
        self._assigned = assigned
        self._intake_queued = intake_queued
        self._broker_link = broker_link

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
        link = GaugeMetricFamily(
            "outpost_hub_broker_link",
            "1 for the state of this hub process's link to the broker (unlisted: a replica "
            "the broker's ACL does not name, taking no device messages)",
            labels=["state"],
        )
        current = self._broker_link()
        known = current in BROKER_LINK_STATES
        for state in BROKER_LINK_STATES if known else (*BROKER_LINK_STATES, current):
            link.add_metric([state], 1 if state == current else 0)
        yield link
