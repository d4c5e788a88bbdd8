"""The hub's Prometheus metrics, through prometheus-client (never hand-formatted).

Cardinality stays bounded: labels take values from fixed sets (message kinds the wire
contract knows, outcomes, route templates, HTTP statuses, error reasons, roll-out states,
streams), the device profile label keeps the `MAX_PROFILES` most common profiles and the
model label the `MAX_MODELS` most common model names (by inferences:
hub/monitoring/modelmetrics.py), each folding the rest into "other". No series is per device.

Inference counts come from the devices' metric roll-ups as the hub first stores them (a
roll-up a device sends again is not stored again, so not counted again); they are this
hub instance's counters, reset when it restarts, as Prometheus counters may be.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.models.drift import VersionDrift
from hub.monitoring.modelmetrics import InferenceTotals, ModelCollector, fold_models
from hub.store.gauges import EXPIRY_WINDOWS, ROLLOUT_STATES, FleetGauges
from hub.store.modelstats import STREAMS
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
        # Inferences and errors from the devices' roll-ups, as the ingest stores them.
        self.inferences = InferenceTotals()
        self.registry.register(ModelCollector(self.inferences))

    def exposition(
        self,
        fleet_counts: list[tuple[bool, str, int]],
        task_counts: dict[str, int],
        policy_drift: int = 0,
        *,
        gauges: FleetGauges | None = None,
        drift: list[VersionDrift] | None = None,
    ) -> bytes:
        """Render every metric, with the fleet gauges taken from `fleet_counts` (of the
        unrevoked devices: the registry's `gauges` count the revoked ones), the task
        gauges from `task_counts` (tasks by state), the devices whose applied policy
        lags the published one, the registry's `gauges` and the model `drift`."""
        self.fleet.counts = fleet_counts
        self.fleet.task_counts = task_counts
        self.fleet.policy_drift = policy_drift
        self.fleet.gauges = gauges
        self.fleet.drift = drift or []
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
        # (holds since the start, devices held now): hub/mqtt/holds.py, set once it runs.
        self.holds: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.counts: list[tuple[bool, str, int]] = []
        self.task_counts: dict[str, int] = {}
        self.policy_drift = 0
        self.gauges: FleetGauges | None = None
        self.drift: list[VersionDrift] = []

    def collect(self) -> Iterator[Metric]:
        devices = GaugeMetricFamily(
            "outpost_hub_devices",
            # Revoked devices are left out, not counted offline: an offline device should
            # come back, a revoked one cannot (outpost_hub_devices_revoked counts them).
            "Unrevoked devices in the registry by state (online, offline) and profile",
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

        holds, held = self.holds()
        holds_total = CounterMetricFamily(
            "outpost_hub_device_holds",
            "Times a device was held off for flooding (session ended, certificates on hold)",
        )
        holds_total.add_metric([], holds)
        yield holds_total
        held_now = GaugeMetricFamily(
            "outpost_hub_devices_held", "Devices held off for flooding now (counted offline)"
        )
        held_now.add_metric([], held)
        yield held_now

        info = GaugeMetricFamily("outpost_hub_info", "Hub version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._registry_gauges()

    def _registry_gauges(self) -> Iterator[Metric]:
        g = self.gauges
        expiring = GaugeMetricFamily(
            "outpost_hub_certificates_expiring",
            "Unrevoked devices whose newest certificate expires within 1 day or 14 days "
            "(or has expired)",
            labels=["within"],
        )
        for within, _ in EXPIRY_WINDOWS:
            expiring.add_metric([within], g.certificates_expiring.get(within, 0) if g else 0)
        yield expiring

        revoked = GaugeMetricFamily(
            "outpost_hub_devices_revoked",
            "Devices revoked (not counted in outpost_hub_devices, online or offline)",
        )
        revoked.add_metric([], g.revoked if g else 0)
        yield revoked

        rollouts = GaugeMetricFamily(
            "outpost_hub_rollouts", "Model roll-outs by state", labels=["state"]
        )
        states = g.rollouts if g else dict.fromkeys(ROLLOUT_STATES, 0)
        for state, n in sorted(states.items()):
            rollouts.add_metric([state], n)
        yield rollouts

        store = GaugeMetricFamily(
            "outpost_hub_devices_store_over_80",
            "Unrevoked devices whose latest roll-up says a store stream is over 80 % full",
            labels=["stream"],
        )
        for stream in STREAMS:
            store.add_metric([stream], g.stores_over.get(stream, 0) if g else 0)
        yield store

        flagged: dict[str, set[str]] = {}
        psi_max: dict[str, float] = {}
        for version in self.drift:
            flagged.setdefault(version.model, set()).update(version.flagged)
            values = [d.psi for d in version.devices if d.psi is not None]
            psi_max[version.model] = max([psi_max.get(version.model, 0.0), *values])
        devices = GaugeMetricFamily(
            "outpost_hub_model_drift_devices",
            "Devices whose recent labels or confidences drift from the fleet's (PSI >= 0.25)",
            labels=["model"],
        )
        counts = fold_models(
            {m: len(ids) for m, ids in flagged.items()}, lambda n: n, lambda ns: sum(ns)
        )
        for model, n in sorted(counts.items()):
            devices.add_metric([model], n)
        yield devices
        highest = GaugeMetricFamily(
            "outpost_hub_model_psi_max",
            "Highest population stability index of any device against the fleet, per model",
            labels=["model"],
        )
        ranked = fold_models(psi_max, lambda v: v, lambda vs: max(vs, default=0.0))
        for model, value in sorted(ranked.items()):
            highest.add_metric([model], value)
        yield highest


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
