"""The hub daemon's lifecycle: steps in, in order; the reverse on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from hub import limits, revocation
from hub.acks import LinkDownError
from hub.api.context import ApiContext
from hub.api.server import WebServer
from hub.broker import BrokerSupervisor
from hub.certificates import Renewals
from hub.config import HubConfig
from hub.dispatcher import Dispatcher
from hub.enrollment import Enrollment, load_signing_key, load_token_key
from hub.holds import FloodHolds
from hub.ingest import Ingest
from hub.intake import Budget, DeviceIntake
from hub.leadership import Leadership
from hub.link import HubLink
from hub.metrics import HubMetrics
from hub.paths import HubPaths, link_cn
from hub.policies import PolicyPublisher
from hub.releases import ModelShelf
from hub.replicametrics import ReplicaCollector
from hub.rollouts import RolloutService
from hub.store import HubStore
from hub.store.engine import describe
from outpost import tls
from outpost.aio import supervise
from outpost.datalock import DataLock
from outpost.sdnotify import Notifier

logger = logging.getLogger(__name__)

LIVENESS_PERIOD_S = 1.0


class Hub:
    """Store, managed broker, MQTT link, web endpoint and liveness sweep, as one unit."""

    def __init__(
        self, paths: HubPaths, config: HubConfig, *, notifier: Notifier | None = None
    ) -> None:
        self.paths = paths
        self.notifier = notifier or Notifier(None)  # systemd's, or one that does nothing
        self.config = config
        self.ready = asyncio.Event()
        self.store: HubStore | None = None
        self.broker: BrokerSupervisor | None = None
        self.ingest: Ingest | None = None
        self.link: HubLink | None = None
        self.intake: DeviceIntake | None = None
        self.holds: FloodHolds | None = None
        self.metrics: HubMetrics | None = None
        self.web: WebServer | None = None
        self.dispatcher: Dispatcher | None = None
        self.policies: PolicyPublisher | None = None
        self.leadership: Leadership | None = None
        self.rollouts: RolloutService | None = None

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
            self.store = store = await asyncio.to_thread(
                HubStore,
                database,
                busy_timeout_ms=self.config.db_busy_timeout_ms,
                pool_size=self.config.db_pool_size,
            )
            stack.callback(store.close)
            replica = self.config.replica_id
            self.leadership = leadership = Leadership(
                store, link_cn(replica), elect=bool(replica) and self.config.elect_leader
            )
            # The singleton work runs as the leader, each unit fenced by the lease.
            leader_store = store.fenced(leadership.fence)

            await revocation.prepare(self.paths, self.config, store)  # the broker's CRL
            if self.config.managed_broker:
                # Before the broker starts: it inherits the limit, one file per device.
                file_limit = limits.raise_open_files()
                host, port = self.config.broker_address
                self.broker = BrokerSupervisor(
                    self.paths,
                    program=self.config.mosquitto,
                    host=host,
                    port=port,
                    max_packet_bytes=self.config.max_payload_bytes,
                    max_connections=file_limit.max_connections,
                    log_max_bytes=self.config.broker_log_max_bytes,
                )
                await self.broker.start()
                stack.push_async_callback(self.broker.stop)

            self.metrics = metrics = HubMetrics(
                broker_restarts=lambda: self.broker.restarts if self.broker else 0
            )
            self.dispatcher = dispatcher = Dispatcher(leader_store, self.config, self._publish)
            signing_key = await asyncio.to_thread(load_signing_key, self.paths)
            self.policies = policies = PolicyPublisher(store, signing_key, self._publish_retained)
            self.rollouts = rollouts = RolloutService(store, self._publish_retained)
            shelf = ModelShelf(self.paths.models, store, signing_key)
            self.ingest = Ingest(
                store,
                max_payload_bytes=self.config.max_payload_bytes,
                outcomes=metrics.messages,
                stored=metrics.records_stored,
                acks=metrics.acks,
                observe_batch=metrics.ingest_seconds.observe,
                publish=self._publish,
                dispatcher=dispatcher,
                task_results=metrics.task_results,
                on_hello=self._greeted,
                on_model_state=rollouts.on_state,
                on_inventory=rollouts.on_inventory,
                on_rollups=metrics.inferences.add,
            )
            self.intake = intake = DeviceIntake(Budget.of(self.config), dropped=metrics.messages)
            self.holds = holds = FloodHolds(
                self.paths, self.config, store, intake, broker=self.broker
            )
            metrics.fleet.holds = lambda: (holds.holds_total, len(holds.held))
            metrics.registry.register(
                ReplicaCollector(
                    leading=lambda: leadership.leading,
                    conflicts=lambda: store.conflicts,
                    assigned=lambda: dispatcher.outcomes["assigned"],
                    intake_queued=intake.qsize,
                )
            )
            context = await asyncio.to_thread(
                self._api_context, store, metrics, dispatcher, policies, shelf, intake, holds
            )
            self.web = web = WebServer(self.paths, context)
            await web.start()
            stack.push_async_callback(web.stop)

            self.link = HubLink(self.paths, self.config, self.ingest, intake)
            self.ready.set()
            logger.info(
                "hub %srunning (data %s, database %s)",
                f"replica {replica} " if replica else "",
                self.paths.root,
                describe(database),
            )
            await supervise(
                {
                    "hub.mqtt-link": self.link.run(),
                    "hub.leadership": leadership.run(),
                    "hub.liveness": leadership.while_leading(lambda: self._liveness(leader_store)),
                    "hub.holds": holds.run(),
                    "hub.dispatcher": leadership.while_leading(dispatcher.run),
                    "hub.policies": policies.run(),
                    "hub.rollouts": rollouts.run(),
                    "hub.watchdog": self.notifier.keep_alive(),
                    "hub.status": self._tell_systemd(self.link),
                }
            )

    async def _tell_systemd(self, link: HubLink) -> None:
        """READY=1 once the MQTT link is up too (store, broker and web endpoint already
        are); then keep the status line current."""
        await link.state.connected.wait()
        self.notifier.ready(await self.status_line())
        await self.notifier.report(self.status_line)

    async def status_line(self) -> str:
        """One line for `systemctl status`: devices online and the link's state."""
        assert self.store is not None
        assert self.link is not None
        counts = await self.store.fleet_counts()
        online = sum(n for up, _, n in counts if up)
        total = sum(n for _, _, n in counts)
        return f"{online} of {total} devices online; broker link {self.link.state.state}"

    async def _greeted(self, device_ids: list[str]) -> None:
        """Devices said hello: their policy and model releases go out (again)."""
        if self.policies is not None:
            self.policies.request(device_ids)
        if self.rollouts is not None:
            self.rollouts.request(device_ids)

    async def _publish(self, topic: str, payload: bytes) -> None:
        """Publish through the link (made after the ingest that uses this)."""
        if self.link is None:
            raise LinkDownError("the hub has no link yet")
        await self.link.publish(topic, payload)

    async def _publish_retained(self, topic: str, payload: bytes) -> None:
        if self.link is None:
            raise LinkDownError("the hub has no link yet")
        await self.link.publish(topic, payload, retain=True)

    def _api_context(
        self,
        store: HubStore,
        metrics: HubMetrics,
        dispatcher: Dispatcher,
        policies: PolicyPublisher,
        shelf: ModelShelf,
        intake: DeviceIntake,
        holds: FloodHolds,
    ) -> ApiContext:
        """Load keys and the CA for the web API (reads files: run in a thread)."""
        return ApiContext(
            store=store,
            config=self.config,
            enrollment=Enrollment(self.paths, self.config, store),
            token_key=load_token_key(self.paths),
            ca_fingerprint=tls.fingerprint(self.paths.ca_cert.read_bytes()),
            metrics=metrics,
            broker=self.broker,
            dispatcher=dispatcher,
            policies=policies,
            models=shelf,
            rollouts=self.rollouts,
            renewals=Renewals.load(self.paths, self.config, store),
            revoker=revocation.Revoker(self.paths, self.config, store, broker=self.broker),
            intake=intake,
            holds=holds,
        )

    async def _liveness(self, store: HubStore) -> None:
        """Mark devices offline whose heartbeats stopped without a last will (a cut link)."""
        while True:
            await asyncio.sleep(LIVENESS_PERIOD_S)
            try:
                silent = await store.expire_silent(
                    now=time.time(), intervals=self.config.offline_after_heartbeats
                )
            except Exception as exc:  # a locked or read-only database: try next period
                logger.warning("could not sweep for silent devices: %s", exc)
                continue
            for device_id in silent:
                logger.info("%s offline (no heartbeat)", device_id)
