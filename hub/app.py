"""The hub daemon's lifecycle: steps in, in order; the reverse on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any

from hub import liveness
from hub.api.context import ApiContext
from hub.api.server import WebServer
from hub.broker import limits
from hub.broker.managed import BrokerSupervisor
from hub.config import HubConfig
from hub.courier.desk import CourierDesk, open_desk
from hub.courier.importer import Tally
from hub.fleet import keyfiles, revocation
from hub.fleet.agentreleases import AgentShelf
from hub.fleet.certificates import Renewals
from hub.fleet.enrollment import Enrollment, load_signing_key, load_token_key
from hub.fleet.policies import PolicyPublisher
from hub.leadership import Leadership
from hub.models.driftwatch import DriftWatch
from hub.models.releases import ModelShelf
from hub.models.rollouts import RolloutService
from hub.monitoring.metrics import HubMetrics
from hub.monitoring.replicametrics import ReplicaCollector
from hub.mqtt.acks import LinkDownError, Publish
from hub.mqtt.holds import FloodHolds
from hub.mqtt.ingest import Ingest
from hub.mqtt.intake import Budget, DeviceIntake
from hub.mqtt.link import HubLink
from hub.paths import HubPaths, link_cn
from hub.sinks.drain import Bounds
from hub.sinks.service import SinkService
from hub.store import HubStore
from hub.store.engine import describe
from hub.tasks.dispatcher import Dispatcher
from outpost.aio import supervise
from outpost.courier.sealing import BundleError
from outpost.datalock import DataLock
from outpost.sdnotify import Notifier

logger = logging.getLogger(__name__)


class HubNotRunningError(RuntimeError):
    """The hub's parts exist once it is ready (`Hub.ready`), not before."""


@dataclasses.dataclass(frozen=True)
class HubParts:
    """What exists only while the hub runs, each part made whole before it is ready."""

    store: HubStore
    leader_store: HubStore  # the same store, each unit of work fenced by the lease
    leadership: Leadership
    broker: BrokerSupervisor | None  # None: an external broker, not the hub's to run
    metrics: HubMetrics
    dispatcher: Dispatcher
    policies: PolicyPublisher
    rollouts: RolloutService
    ingest: Ingest
    intake: DeviceIntake
    holds: FloodHolds
    web: WebServer
    link: HubLink
    sinks: SinkService

    async def status_line(self) -> str:
        """One line for `systemctl status`: devices online and the link's state."""
        counts = await self.store.fleet_counts()
        online = sum(n for up, _, n in counts if up)
        total = sum(n for _, _, n in counts)
        return f"{online} of {total} devices online; broker link {self.link.state.state}"


class _Outbound:
    """Publishes through the hub's link. The link hands device messages to the ingest,
    which publishes through here (as the dispatcher and publishers do): so the link is
    made after them and attached. Until then a publish finds the link down, which any
    publish must already expect."""

    def __init__(self) -> None:
        self.link: HubLink | None = None

    def link_state(self) -> str:
        """The link's state: starting, connected, disconnected, or unlisted (a replica
        the broker's ACL does not name: hub/mqtt/listing.py)."""
        return "starting" if self.link is None else self.link.state.state

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._attached().publish(topic, payload)

    async def publish_retained(self, topic: str, payload: bytes) -> None:
        await self._attached().publish(topic, payload, retain=True)

    def assignments(self, seconds: float) -> Publish:
        """How task assignments go: the broker drops one not delivered within `seconds`,
        and each is written as it is published, ahead of the rest of the request or
        pass that made it (a device waits for it)."""
        expiry_s = max(1, math.ceil(seconds))

        async def publish(topic: str, payload: bytes) -> None:
            await self._attached().publish(topic, payload, expiry_s=expiry_s, at_once=True)

        return publish

    def _attached(self) -> HubLink:
        if self.link is None:
            raise LinkDownError("the hub has no link yet")
        return self.link


class Hub:
    """Store, managed broker, MQTT link, web endpoint and liveness sweep, as one unit."""

    def __init__(
        self, paths: HubPaths, config: HubConfig, *, notifier: Notifier | None = None
    ) -> None:
        self.paths = paths
        self.notifier = notifier or Notifier(None)  # systemd's, or one that does nothing
        self.config = config
        self.ready = asyncio.Event()
        self._parts: HubParts | None = None  # set once, as `ready` is; kept after a stop

    @property
    def parts(self) -> HubParts:
        """The running hub's parts; `HubNotRunningError` until `ready` is set."""
        if self._parts is None:
            raise HubNotRunningError(f"the hub on {self.paths.root} is not running yet")
        return self._parts

    async def run(self) -> None:
        """Run until cancelled."""
        if not self.paths.ca_key.exists():
            raise FileNotFoundError(
                f"{self.paths.root} is not a hub data folder: run `outpost-hub init` first"
            )
        async with contextlib.AsyncExitStack() as stack:
            # First, before any file is touched: one hub per data folder. A second one
            # would rewrite its broker's config and CRL, fail on the ports and delete
            # what the running one relies on.
            lock = DataLock.acquire(self.paths.root, "outpost-hub", web=self.config.hub_url)
            stack.callback(lock.release)
            database = self.config.database(self.paths.database)
            store = await asyncio.to_thread(
                HubStore,
                database,
                busy_timeout_ms=self.config.db_busy_timeout_ms,
                pool_size=self.config.db_pool_size,
            )
            stack.callback(store.close)
            held = await revocation.prepare(self.paths, self.config, store)  # the broker's CRL
            broker = await self._start_broker(stack)
            self._parts = parts = await self._start_parts(stack, store, broker, held)
            self.ready.set()
            replica = self.config.replica_id
            logger.info(
                "hub %srunning (data %s, database %s)",
                f"replica {replica} " if replica else "",
                self.paths.root,
                describe(database),
            )
            leadership = parts.leadership
            watches: dict[str, Coroutine[Any, Any, None]] = {}
            if self.config.sinks:  # each change of a device's drift level, as an event
                drift_watch = DriftWatch(parts.leader_store)
                watches["hub.models.drift"] = leadership.while_leading(drift_watch.run)
            await supervise(
                {
                    **watches,
                    "hub.mqtt-link": parts.link.run(),
                    "hub.leadership": leadership.run(),
                    "hub.liveness": leadership.while_leading(
                        lambda: liveness.sweep(
                            parts.leader_store, self.config.offline_after_heartbeats
                        )
                    ),
                    "hub.mqtt.holds": parts.holds.run(),
                    "hub.tasks.dispatcher": leadership.while_leading(parts.dispatcher.run),
                    "hub.sinks": leadership.while_leading(parts.sinks.run),
                    "hub.fleet.policies": parts.policies.run(),
                    "hub.models.rollouts": parts.rollouts.run(),
                    "hub.models.shadows": leadership.while_leading(
                        lambda: parts.rollouts.judge_shadows(parts.leader_store)
                    ),
                    "hub.models.catch-up": leadership.while_leading(
                        lambda: parts.rollouts.catch_up(parts.leader_store)
                    ),
                    "hub.watchdog": self.notifier.keep_alive(),
                    "hub.status": self._tell_systemd(parts),
                }
            )

    async def _start_broker(self, stack: contextlib.AsyncExitStack) -> BrokerSupervisor | None:
        """Start the managed broker; None if the hub uses an external one."""
        if not self.config.managed_broker:
            return None
        # Before the broker starts: it inherits the limit, one file per device.
        file_limit = limits.raise_open_files()
        host, port = self.config.broker_address
        broker = BrokerSupervisor(
            self.paths,
            program=self.config.mosquitto,
            host=host,
            port=port,
            max_packet_bytes=self.config.max_payload_bytes,
            max_connections=file_limit.max_connections,
            log_max_bytes=self.config.broker_log_max_bytes,
        )
        await broker.start()
        stack.push_async_callback(broker.stop)
        return broker

    async def _start_parts(
        self,
        stack: contextlib.AsyncExitStack,
        store: HubStore,
        broker: BrokerSupervisor | None,
        held: set[str],
    ) -> HubParts:
        """Make the fleet's services, start the web endpoint, and make the MQTT link."""
        replica = self.config.replica_id
        leadership = Leadership(
            store, link_cn(replica), elect=bool(replica) and self.config.elect_leader
        )
        if self.config.sinks:  # changes write their events for the sinks, from now on
            store.publish_events()
        # The singleton work runs as the leader, each unit fenced by the lease.
        leader_store = store.fenced(leadership.fence)
        metrics = HubMetrics(broker_restarts=lambda: broker.restarts if broker else 0)
        outbound = _Outbound()
        # An assignment not delivered by the time the hub counts it lapsed (a link down,
        # a device's session queueing it) would run work the hub gave back: dropped.
        tasks_out = outbound.assignments(self.config.task_accept_timeout_s)
        dispatcher = Dispatcher(
            leader_store, self.config, tasks_out, queue=store, cancels=outbound.publish
        )
        signing_key = await asyncio.to_thread(load_signing_key, self.paths)
        policies = PolicyPublisher(store, signing_key, outbound.publish_retained)
        rollouts = RolloutService(store, outbound.publish_retained, signing_key)
        shelf = ModelShelf(self.paths.models, store, signing_key)

        async def greeted(device_ids: list[str]) -> None:
            """Devices said hello: their policy and model releases go out (again)."""
            policies.request(device_ids)
            rollouts.request(device_ids)

        ingest = Ingest(
            store,
            max_payload_bytes=self.config.max_payload_bytes,
            compression=self.config.compression,
            outcomes=metrics.messages,
            stored=metrics.records_stored,
            acks=metrics.acks,
            observe_batch=metrics.ingest_seconds.observe,
            publish=outbound.publish,
            dispatcher=dispatcher,
            task_results=metrics.task_results,
            on_hello=greeted,
            on_model_state=rollouts.on_state,
            on_inventory=rollouts.on_inventory,
            on_rollups=metrics.inferences.add,
        )
        intake = DeviceIntake(Budget.of(self.config), dropped=metrics.messages)
        holds = FloodHolds(self.paths, self.config, store, intake, broker=broker, listed=held)
        metrics.fleet.holds = lambda: (holds.holds_total, len(holds.held))
        sinks = SinkService(
            self.config.sinks,
            leader_store,
            source=self.config.hub_url,
            keep_s=self.config.sink_keep_s,
            dead_letters_keep_s=self.config.sink_dead_letters_keep_s,
            bounds=Bounds(self.config.sink_max_lag_events, self.config.sink_max_lag_s),
        )
        metrics.registry.register(sinks.collector)
        metrics.registry.register(
            ReplicaCollector(
                leading=lambda: leadership.leading,
                conflicts=lambda: store.conflicts,
                assigned=lambda: dispatcher.outcomes["assigned"],
                intake_queued=intake.qsize,
                broker_link=outbound.link_state,
            )
        )
        context = await asyncio.to_thread(
            self._api_context,
            store=store,
            broker=broker,
            metrics=metrics,
            dispatcher=dispatcher,
            policies=policies,
            rollouts=rollouts,
            shelf=shelf,
            agents=AgentShelf(self.paths, store, signing_key),
            intake=intake,
            holds=holds,
            broker_link=outbound.link_state,
        )
        web = WebServer(self.paths, context)
        await web.start()
        stack.push_async_callback(web.stop)

        outbound.link = link = HubLink(self.paths, self.config, ingest, intake)
        return HubParts(
            store=store,
            leader_store=leader_store,
            leadership=leadership,
            broker=broker,
            metrics=metrics,
            dispatcher=dispatcher,
            policies=policies,
            rollouts=rollouts,
            ingest=ingest,
            intake=intake,
            holds=holds,
            web=web,
            sinks=sinks,
            link=link,
        )

    async def _tell_systemd(self, parts: HubParts) -> None:
        """READY=1 once the MQTT link is up too (store, broker and web endpoint already
        are), or a replica waits to be listed in the broker's ACL (restarting it would
        not help); then keep the status line current."""
        await parts.link.started()
        self.notifier.ready(await parts.status_line())
        await self.notifier.report(parts.status_line)

    def _api_context(
        self,
        *,
        store: HubStore,
        broker: BrokerSupervisor | None,
        metrics: HubMetrics,
        dispatcher: Dispatcher,
        policies: PolicyPublisher,
        rollouts: RolloutService,
        shelf: ModelShelf,
        agents: AgentShelf,
        intake: DeviceIntake,
        holds: FloodHolds,
        broker_link: Callable[[], str],
    ) -> ApiContext:
        """Load keys and the CA for the web API (reads files: run in a thread)."""
        return ApiContext(
            store=store,
            config=self.config,
            enrollment=Enrollment(self.paths, self.config, store),
            token_key=load_token_key(self.paths),
            ca_fingerprint=keyfiles.ca_fingerprint(self.paths.ca_cert),
            metrics=metrics,
            broker=broker,
            dispatcher=dispatcher,
            policies=policies,
            models=shelf,
            agents=agents,
            rollouts=rollouts,
            renewals=Renewals.load(self.paths, self.config, store),
            revoker=revocation.Revoker(self.paths, self.config, store, broker=broker),
            intake=intake,
            holds=holds,
            courier=self._courier_desk(store, metrics),
            broker_link=broker_link,
        )

    def _courier_desk(self, store: HubStore, metrics: HubMetrics) -> CourierDesk | BundleError:
        """The courier desk, or why there is none (the API's import says so). What its
        imports store is counted in the metrics, as the ingest's is."""
        tally = Tally(metrics.records_stored, metrics.task_results, metrics.inferences.add)
        try:
            return open_desk(self.paths, store, self.config, tally)
        except BundleError as exc:
            return exc
