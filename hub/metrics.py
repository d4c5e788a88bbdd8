"""The hub's Prometheus metrics, through prometheus-client (never hand-formatted).

Cardinality stays bounded: labels take values from fixed sets (message kinds the wire
contract knows, outcomes, route templates, HTTP statuses), and the device profile label
keeps the `MAX_PROFILES` most common profiles and folds the rest into "other". No
series is per device.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outpost import __version__, wire

MAX_PROFILES = 20
TASK_STATES = (
    "queued",
    "assigned",
    "accepted",
    "running",
    "succeeded",
    "failed",
    "expired",
    "cancelled",
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubMetrics:
    """Metrics of one hub instance, in a registry of its own."""

    def __init__(self, broker_restarts: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        # Device messages by (kind, outcome): the ingest counts, the scrape reads.
        self.messages: collections.Counter[tuple[str, str]] = collections.Counter()
        # Records newly stored by stream, and acks by outcome: the ingest counts these too.
        self.records_stored: collections.Counter[str] = collections.Counter(
            dict.fromkeys(wire.STREAMS, 0)
        )
        self.acks: collections.Counter[str] = collections.Counter(
            dict.fromkeys(("sent", "dropped", "failed"), 0)
        )
        # Task results found in uploads, by outcome (accepted, late, unknown, malformed).
        self.task_results: collections.Counter[str] = collections.Counter(
            dict.fromkeys(("accepted", "late"), 0)
        )
        self.http_seconds = Histogram(
            "outpost_hub_http_request_seconds",
            "Time to answer an API request, by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "outpost_hub_ingest_batch_seconds",
            "Time to validate and store one batch of device messages",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.fleet = _Fleet(
            self.messages, self.records_stored, self.acks, self.task_results, broker_restarts
        )
        self.registry.register(self.fleet)

    def exposition(
        self,
        fleet_counts: list[tuple[bool, str, int]],
        task_counts: dict[str, int],
        policy_drift: int = 0,
    ) -> bytes:
        """Render every metric, with the fleet gauges taken from `fleet_counts`, the task
        gauges from `task_counts` (tasks by state) and the devices whose applied policy
        lags the published one."""
        self.fleet.counts = fleet_counts
        self.fleet.task_counts = task_counts
        self.fleet.policy_drift = policy_drift
        return generate_latest(self.registry)


class _Fleet(Collector):
    """Series computed at scrape time from the registry and the ingest's counts."""

    def __init__(
        self,
        outcomes: collections.Counter[tuple[str, str]],
        records_stored: collections.Counter[str],
        acks: collections.Counter[str],
        task_results: collections.Counter[str],
        broker_restarts: Callable[[], int],
    ) -> None:
        self.outcomes = outcomes
        self.records_stored = records_stored
        self.acks = acks
        self.task_results = task_results
        self.broker_restarts = broker_restarts
        self.counts: list[tuple[bool, str, int]] = []
        self.task_counts: dict[str, int] = {}
        self.policy_drift = 0

    def collect(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "outpost_hub_devices",
            "Devices in the registry by state and profile",
            labels=["state", "profile"],
        )
        for (state, profile), n in sorted(_fold_profiles(self.counts).items()):
            devices.add_metric([state, profile], n)
        yield devices

        messages = CounterMetricFamily(
            "outpost_hub_messages",
            "Device messages by kind and outcome (accepted, rejected with its reason; "
            "record batches also gap or error)",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), n in sorted(self.outcomes.items()):
            messages.add_metric([kind, outcome], n)
        yield messages

        stored = CounterMetricFamily(
            "outpost_hub_records_stored",
            "Records stored by stream (replayed duplicates are not counted again)",
            labels=["stream"],
        )
        for stream, n in sorted(self.records_stored.items()):
            stored.add_metric([stream], n)
        yield stored

        acks = CounterMetricFamily(
            "outpost_hub_acks",
            "Acknowledgements to devices: sent, dropped (link down) or failed to publish",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.acks.items()):
            acks.add_metric([outcome], n)
        yield acks

        tasks = GaugeMetricFamily(
            "outpost_hub_tasks", "Tasks in the hub's database by state", labels=["state"]
        )
        for state in TASK_STATES:  # every state always present: no vanishing series
            tasks.add_metric([state], self.task_counts.get(state, 0))
        yield tasks

        results = CounterMetricFamily(
            "outpost_hub_task_results",
            "Task results from devices: accepted (ended the task) or late (stale attempt, "
            "task already ended), unknown task, malformed",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.task_results.items()):
            results.add_metric([outcome], n)
        yield results

        drift = GaugeMetricFamily(
            "outpost_hub_policy_drift_devices",
            "Devices whose applied policy version lags the one the hub published",
        )
        drift.add_metric([], self.policy_drift)
        yield drift

        restarts = CounterMetricFamily(
            "outpost_hub_broker_restarts", "Times the hub restarted its managed Mosquitto"
        )
        restarts.add_metric([], self.broker_restarts())
        yield restarts

        info = GaugeMetricFamily("outpost_hub_info", "Hub version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


def _fold_profiles(counts: list[tuple[bool, str, int]]) -> dict[tuple[str, str], int]:
    per_profile: collections.Counter[str] = collections.Counter()
    for _, profile, n in counts:
        per_profile[profile] += n
    kept = {p for p, _ in per_profile.most_common(MAX_PROFILES)}
    folded: dict[tuple[str, str], int] = collections.defaultdict(int)
    for online, profile, n in counts:
        folded[("online" if online else "offline", profile if profile in kept else "other")] += n
    for profile in kept:  # both states present for every kept profile: no vanishing series
        for state in ("online", "offline"):
            folded.setdefault((state, profile), 0)
    return folded
