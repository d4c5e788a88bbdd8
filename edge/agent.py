"""The agent daemon's lifecycle: what it opens, in order, and how it shuts down.

`Agent.run` makes each part whole, then runs them until cancelled; the exit stack closes
them in reverse. The parts: the store and the local API (`edge.localapi`), the models
(`edge.inference`), tasks and roll-outs (`edge.tasks`, `edge.deploy`), the policy
(`edge.policy`, applied by `edge.tuning`), the session with the hub (`edge.session`),
and heartbeats and metrics (`edge.telemetry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from edge import sysinfo
from edge.agentupdate import (
    ROLLED_BACK,
    ROLLED_BACK_REPORTED,
    AgentUpdater,
    side_by_side_prefix,
)
from edge.config import AgentConfig
from edge.courierapi import CourierRoutes
from edge.deploy import Deployer
from edge.effective import task_budget
from edge.identity import DevicePaths, Identity
from edge.inference.directory import ModelDirectory
from edge.inference.reporting import Reporting
from edge.inference.service import InferenceService
from edge.localapi import LocalApi
from edge.masking import Masker
from edge.parts import AgentParts
from edge.policy import PolicyKeeper
from edge.profile import DeviceProfile
from edge.refusal import Refusals
from edge.renewal import CertRenewer, ClientTls
from edge.session import MQTT_LOGGER, Outbox, Session
from edge.status import Status
from edge.store import AgentStore, Bounds
from edge.store.keyfile import open_keyed
from edge.tasks import TaskRunner
from edge.telemetry import Telemetry
from edge.tuning import Tuning
from edge.uploader import Uploader
from outpost import __version__, files, logs
from outpost import policy as outpost_policy
from outpost.aio import supervise
from outpost.datalock import DataLock
from outpost.mqtt import LinkState, run_forever
from outpost.sdnotify import Notifier
from outpost.settings import parse_broker_url

logger = logging.getLogger(__name__)

LAUNCHER_RETRY_S = 5.0  # between tries to tell the launcher this version came up


class Agent:
    """One device: store, local API and link to its hub."""

    def __init__(
        self,
        paths: DevicePaths,
        config: AgentConfig,
        identity: Identity,
        profile: DeviceProfile,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.paths = paths
        self.notifier = notifier or Notifier(None)  # systemd's, or one that does nothing
        self.config = config
        self.identity = identity
        self.profile = profile
        self.link = LinkState(logger, "broker link")
        # Revoked or expired for good: said once, shown in the status, retried slowly.
        self.refusals = Refusals(self.link, paths, config.refused_retry_s)
        self.ready = asyncio.Event()  # store open and local API listening
        self.masker = Masker(paths.mask_key)
        self._started = time.monotonic()
        self._tls = ClientTls(paths)  # follows the certificate file across renewals
        # Parsed here: a bad broker address is refused before anything is opened.
        self._host, self._port = parse_broker_url(
            config.broker or identity.broker_url, "broker url"
        )

    async def run(self) -> None:
        """Run until cancelled: open the store, serve the local API, connect forever."""
        device_id = self.identity.device_id
        async with contextlib.AsyncExitStack() as stack:
            # First, before any file is touched: one agent per data folder.
            lock = DataLock.acquire(self.paths.root, "outpost-agent")
            stack.callback(lock.release)
            self._filter_logs(stack)

            store = await asyncio.to_thread(self._open_store)
            await store.start()
            stack.push_async_callback(store.close)
            inference = self._inference_service(store)
            await inference.start()
            stack.push_async_callback(inference.close)
            # Task and model states go out through whichever connection is up, if any.
            outbox = Outbox(device_id)
            uploader = Uploader(store, device_id, self.config.sync)
            deployer = Deployer(
                self.paths,
                self.identity.hub_url,
                inference,
                outbox.model_state,
                device_id=self.identity.device_id,
            )
            loop = asyncio.get_running_loop()

            def apply_on_loop(checked: outpost_policy.Policy, sets: dict[str, Any]) -> None:
                # Verified and kept on disk in a worker thread, applied on the loop: the
                # settings it changes wake waiters there (a deploy's, an upload's). Queued
                # before the thread's own result, so it is applied when the caller resumes.
                # (`tuning` is made below, before any policy is loaded.)
                loop.call_soon_threadsafe(tuning.apply, checked, sets)

            policy = PolicyKeeper(
                device_id, self.paths.hub_signing_pub, self.paths.policy, apply_on_loop
            )
            kept = await asyncio.to_thread(policy.kept)
            budget = task_budget(
                self.profile.budgets.max_concurrent_tasks,
                self.config.task_inbox,
                kept[0].raw if kept else {},
            )
            tasks = TaskRunner(
                store,
                inference,
                slots=budget.slots,
                inbox_capacity=budget.inbox,
                notify=outbox.task_states,
            )
            tuning = Tuning(
                self.config,
                self.masker,
                store=store,
                inference=inference,
                tasks=tasks,
                uploader=uploader,
            )
            tuning.on_allowed_models = deployer.allowed_models_changed
            await asyncio.to_thread(policy.load)  # the kept policy applies before anything runs
            updater = AgentUpdater(
                self.paths,
                self.identity.hub_url,
                outbox.model_state,
                prefix=side_by_side_prefix(),
            )
            parts = AgentParts(store, inference, uploader, tasks, deployer, policy, updater)

            status = Status(device_id, self.link, self.refusals, parts, started=self._started)
            api = LocalApi(
                store,
                inference,
                status.report,
                self.config.inference.max_body_bytes,
                masker=self.masker,
            )
            courier = CourierRoutes(
                self.paths,
                device_id,
                parts,
                task_slots=tasks.slots,
            )
            api.add(courier.routes())
            await api.start(self.paths.socket, self.config.local_port)
            stack.push_async_callback(api.stop)

            await self._tls.load()
            capabilities = await asyncio.to_thread(
                sysinfo.capabilities, self.profile, self.paths.root
            )
            sampler = await asyncio.to_thread(
                sysinfo.LoadSampler, self.paths.root, self.profile.thermal.sensor
            )
            telemetry = Telemetry(
                parts,
                tuning,
                sampler,
                metrics_window=self.paths.metrics_window,
                started=self._started,
            )
            courier.heartbeat = telemetry.heartbeat  # bundles say what a heartbeat would
            # New work is refused while the load last sampled is over the policy's caps.
            tasks.overloaded = lambda: tuning.caps.refusal(telemetry.last_load)
            inference.shadows.overloaded = lambda: (
                telemetry.last_load is not None
                and telemetry.last_load.cpu_percent > tuning.shadow_cpu_max_percent
            )
            session = Session(
                self.config,
                self.identity,
                self.profile,
                parts,
                broker=(self._host, self._port),
                tls=self._tls,
                refusals=self.refusals,
                capabilities=capabilities,
                tuning=tuning,
                telemetry=telemetry,
                outbox=outbox,
            )

            logger.info(
                "agent %s starting (profile %s, broker %s:%d)",
                device_id,
                self.profile.name,
                self._host,
                self._port,
            )
            await telemetry.event("agent.started", version=__version__)
            await updater.load()  # before the report renames the launcher's word
            await self._report_rollback(telemetry)
            self.ready.set()
            self.notifier.ready(await status.line())
            renewer = CertRenewer(
                self.paths,
                on_renewed=self.refusals.renewed,
                on_refused=self.refusals.renewal_refused,
            )
            self.refusals.on_expired = renewer.urge
            await supervise(
                {
                    "agent.ready": self._tell_launcher("ready"),
                    "agent.reached": self._tell_launcher("reached", after=session.welcomed),
                    "agent.watchdog": self.notifier.keep_alive(),
                    "agent.status": self.notifier.report(status.line),
                    "agent.metrics": telemetry.rollups(),
                    "agent.tasks": tasks.run(),
                    "agent.deployer": deployer.run(),
                    "agent.updater": updater.run(),
                    "agent.cert-renewer": renewer.run(),
                    "agent.mqtt-link": run_forever(
                        session.make_client,
                        session.run,
                        self.link,
                        address=f"{self._host}:{self._port}",
                        backoff_cap=self.config.reconnect_max_delay,
                        backoff_spread=self.config.reconnect_spread_s,
                        backoff_seed=device_id,
                        refusals=self.refusals,
                    ),
                }
            )

    async def _report_rollback(self, telemetry: Telemetry) -> None:
        """The launcher went back from a version that would not come up: say so, once,
        on the events stream (the hub gets it like any event)."""
        path = self.paths.root / ROLLED_BACK
        try:
            report = json.loads(await asyncio.to_thread(path.read_text))
        except (OSError, ValueError):
            return
        logger.warning(
            "agent %s did not come up (%s): rolled back to %s",
            report.get("from"), report.get("reason"), report.get("to"),
        )  # fmt: skip
        await telemetry.event("agent.rolled_back", **report)
        await asyncio.to_thread(path.replace, path.with_name(ROLLED_BACK_REPORTED))

    def _filter_logs(self, stack: contextlib.AsyncExitStack) -> None:
        """Watch paho's lines for a refused certificate, and mask log fields by policy."""
        # paho logs the broker's refusal of our certificate there (see edge.refusal).
        mqtt_logger = logging.getLogger(MQTT_LOGGER)
        mqtt_logger.addFilter(self.refusals.watch_log)
        stack.callback(mqtt_logger.removeFilter, self.refusals.watch_log)
        # Fields of log events that the policy masks are masked before any is written.
        masking = logs.MaskFields(self.masker.mask)
        for handler in logging.getLogger().handlers:
            handler.addFilter(masking)
            stack.callback(handler.removeFilter, masking)

    async def _tell_launcher(self, what: str, after: asyncio.Event | None = None) -> None:
        """Tell the launcher (systemd/outpost-launch) this version came up (`ready`), or
        reached the hub (`reached`, once `after` is set): a file naming the version. A
        full or failing disk must not stop an agent that serves (it died here once, on a
        disk filled as it started): it says so and tries again until the file is
        written, and the launcher's own deadline decides meanwhile."""
        if after is not None:
            await after.wait()
        while True:
            try:
                await asyncio.to_thread(
                    files.replace, self.paths.root / what, __version__.encode(), files.PRIVATE
                )
                return
            except OSError as exc:
                logger.error(
                    "cannot tell the launcher this agent is %s (%s); trying again in %g s",
                    what,
                    exc.strerror or exc,
                    LAUNCHER_RETRY_S,
                )
                await asyncio.sleep(LAUNCHER_RETRY_S)  # the disk's own time to recover

    def _open_store(self) -> AgentStore:
        """Open the store with the settings' bounds, encrypted if the profile says so."""
        b = self.config.bounds
        bounds = {
            name: Bounds(s.max_records, s.max_bytes, s.max_age_s)
            for name, s in (("results", b.results), ("events", b.events), ("metrics", b.metrics))
        }
        # A store holding records sealed under a key that is not in store.key is not
        # opened (StoreKeyError: its message says what to do), rather than lose them.
        return open_keyed(
            self.paths.store,
            bounds,
            self.paths.store_key,
            encrypt=self.profile.runtime.encrypt_store,
        )

    def _inference_service(self, store: AgentStore) -> InferenceService:
        """Make the inference service the settings and the profile describe."""
        settings = self.config.inference
        return InferenceService(
            ModelDirectory(self.paths.models),
            store,
            runtime=settings.runtime,
            num_threads=self.profile.runtime.num_threads,
            interpreters=self.profile.runtime.interpreters_per_model,
            queue_limit=settings.queue_limit,
            reporting=Reporting(settings.report, settings.confidence_below),
        )
