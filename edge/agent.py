"""The agent daemon: its store and local API, and its session with the hub (hello,
heartbeats, draining the store, applying acknowledgements)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import effective, rollup, sysinfo
from edge.config import AgentConfig
from edge.deploy import Deployer
from edge.identity import DevicePaths, Identity
from edge.inference.directory import ModelDirectory
from edge.inference.service import InferenceService, Reporting
from edge.localapi import LocalApi
from edge.masking import Masker
from edge.metrics_window import MetricsWindow
from edge.policy import PolicyKeeper
from edge.profile import DeviceProfile
from edge.refusal import Client, Refusals
from edge.renewal import CertRenewer, ClientTls
from edge.store import (
    AgentStore,
    Bounds,
    RecordCipher,
    StoreReadError,
    StoreWriteError,
    StreamFullError,
)
from edge.tasks import TaskRunner
from edge.uploader import Uploader
from outpost import __version__, logs, policy, wire
from outpost.aio import supervise
from outpost.datalock import DataLock
from outpost.mqtt import NODELAY, LinkState, run_forever
from outpost.sdnotify import Notifier
from outpost.settings import parse_broker_url
from outpost.sqlite import StoreClosedError

logger = logging.getLogger(__name__)

GOODBYE_TIMEOUT_S = 2.0
# The broker keeps the agent's subscription (and queued acknowledgements) this long.
SESSION_EXPIRY_S = 24 * 3600
MQTT_LOGGER = "mqtt.agent"  # aiomqtt's and paho's lines
# The model inventory rides a heartbeat again after this long even when unchanged.
MODELS_REFRESH_S = 60.0


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
        self._started = time.monotonic()
        self._conn = ""
        self._tls = ClientTls(paths)  # follows the certificate file across renewals
        self._host, self._port = parse_broker_url(
            config.broker or identity.broker_url, "broker url"
        )
        self.store: AgentStore | None = None
        self.uploader: Uploader | None = None
        self.inference: InferenceService | None = None
        self.tasks: TaskRunner | None = None
        self.deployer: Deployer | None = None
        self._client: aiomqtt.Client | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._models_reported: list[wire.ModelInfo] | None = None
        self._models_reported_at = 0.0
        # Settings a policy may change while the agent runs.
        self.heartbeat_interval = config.heartbeat_interval
        self.metrics_interval = config.metrics_interval
        self.masker = Masker(paths.mask_key)
        self.policy: PolicyKeeper | None = None
        self._last_load: wire.Load | None = None
        self._caps = effective.Caps()  # no cap until a policy says

    async def run(self) -> None:
        """Run until cancelled: open the store, serve the local API, connect forever."""
        async with contextlib.AsyncExitStack() as stack:
            # First, before any file is touched: one agent per data folder.
            lock = DataLock.acquire(self.paths.root, "outpost-agent")
            stack.callback(lock.release)
            # paho logs the broker's refusal of our certificate there (see edge.refusal).
            mqtt_logger = logging.getLogger(MQTT_LOGGER)
            mqtt_logger.addFilter(self.refusals.watch_log)
            stack.callback(mqtt_logger.removeFilter, self.refusals.watch_log)
            # Fields of log events that the policy masks are masked before any is written.
            masking = logs.MaskFields(self.masker.mask)
            for handler in logging.getLogger().handlers:
                handler.addFilter(masking)
                stack.callback(handler.removeFilter, masking)
            self.store = store = await asyncio.to_thread(self._open_store)
            await store.start()
            stack.push_async_callback(store.close)
            self.uploader = Uploader(store, self.identity.device_id, self.config.sync)
            self.inference = inference = self._inference_service(store)
            await inference.start()
            stack.push_async_callback(inference.close)
            self.deployer = Deployer(
                self.paths, self.identity.hub_url, inference, self._report_model
            )
            self.tasks = TaskRunner(
                store,
                inference,
                slots=self.profile.budgets.max_concurrent_tasks,
                inbox_capacity=self.config.task_inbox,
                notify=self._notify_tasks,
            )
            self.tasks.overloaded = self._overloaded
            self.policy = PolicyKeeper(
                self.identity.device_id,
                self.paths.hub_signing_pub,
                self.paths.policy,
                self._apply_policy,
            )
            await asyncio.to_thread(self.policy.load)
            api = LocalApi(
                store,
                inference,
                self.status,
                self.config.inference.max_body_bytes,
                masker=self.masker,
            )
            await api.start(self.paths.socket, self.config.local_port)
            stack.push_async_callback(api.stop)

            await self._tls.load()
            self._capabilities = await asyncio.to_thread(
                sysinfo.capabilities, self.profile, self.paths.root
            )
            self._sampler = await asyncio.to_thread(
                sysinfo.LoadSampler, self.paths.root, self.profile.thermal.sensor
            )
            logger.info(
                "agent %s starting (profile %s, broker %s:%d)",
                self.identity.device_id,
                self.profile.name,
                self._host,
                self._port,
            )
            await self._event("agent.started", version=__version__)
            self.ready.set()
            self.notifier.ready(await self.status_line())
            await supervise(
                {
                    "agent.watchdog": self.notifier.keep_alive(),
                    "agent.status": self.notifier.report(self.status_line),
                    "agent.metrics": self._own_metrics(),
                    "agent.tasks": self.tasks.run(),
                    "agent.deployer": self.deployer.run(),
                    "agent.cert-renewer": CertRenewer(
                        self.paths,
                        on_renewed=self.refusals.renewed,
                        on_refused=self.refusals.renewal_refused,
                    ).run(),
                    "agent.mqtt-link": run_forever(
                        self._make_client,
                        self._session,
                        self.link,
                        address=f"{self._host}:{self._port}",
                        backoff_cap=self.config.reconnect_max_delay,
                        backoff_spread=self.config.reconnect_spread_s,
                        backoff_seed=self.identity.device_id,
                        refusals=self.refusals,
                    ),
                }
            )

    def _open_store(self) -> AgentStore:
        b = self.config.bounds
        bounds = {
            name: Bounds(s.max_records, s.max_bytes, s.max_age_s)
            for name, s in (("results", b.results), ("events", b.events), ("metrics", b.metrics))
        }
        cipher = (
            RecordCipher.from_key_file(self.paths.store_key)
            if self.profile.runtime.encrypt_store
            else None
        )
        return AgentStore(self.paths.store, bounds, cipher)

    def _inference_service(self, store: AgentStore) -> InferenceService:
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

    async def status(self) -> dict[str, Any]:
        """What the local API's /v1/status shows."""
        assert self.store is not None
        assert self.inference is not None
        return {
            "device_id": self.identity.device_id,
            "connection": self.link.state,
            "link": self.refusals.report(),
            "uptime_s": time.monotonic() - self._started,
            "policy_version": self.policy.current.version
            if self.policy and self.policy.current
            else None,  # None: no policy yet, the agent runs on its settings file
            "runtime": self.inference.runtime_label,
            "models": {m.name: m.state for m in self.inference.inventory()},
            "tasks": (
                {**dataclasses.asdict(self.tasks.load()), "done": self.tasks.done}
                if self.tasks
                else None
            ),
            "store": await self._store_stats(),
            "sync": {"bytes_sent": self.uploader.bytes_sent if self.uploader else 0},
        }

    async def status_line(self) -> str:
        """One line for `systemctl status`: the link's state and how full the store is."""
        streams = (await self._store_stats()).get("streams", {})
        fill = ", ".join(
            f"{name} {s['fill']:.0%} ({s['records']})" for name, s in sorted(streams.items())
        )
        return f"broker link {self.refusals.summary()}; store {fill or 'empty'}"

    async def _store_stats(self) -> dict[str, Any]:
        """The store's stats, or the reason it could not be read (a failing disk)."""
        assert self.store is not None
        try:
            return await self.store.stats()
        except StoreReadError as exc:
            return {"error": exc.reason}

    def _make_client(self) -> aiomqtt.Client:
        # Each connection gets its own id, carried by its will: the hub then ignores the
        # will of an old connection that lands after a newer one came up.
        self._conn = secrets.token_hex(6)
        will = aiomqtt.Will(
            topic=self._topic("status"), payload=self._status(online=False), qos=1, retain=True
        )
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        return Client(
            self._host,
            self._port,
            identifier=self.identity.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=self._tls.current(),  # a stat; reloads only after a renewal
            will=will,
            keepalive=self.config.keepalive,
            socket_options=NODELAY,
            clean_start=False,
            properties=properties,
            max_inflight_messages=max(20, self.config.sync.in_flight),
            logger=logging.getLogger(MQTT_LOGGER),
            refused=self.refusals.new_attempt(),
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        assert self.uploader is not None
        assert self.inference is not None
        await client.subscribe(wire.down_topic(self.identity.device_id, "#"), qos=1)
        await client.publish(self._topic("status"), self._status(online=True), qos=1, retain=True)
        hello = wire.Hello(
            conn=self._conn,
            agent_version=__version__,
            profile=self.profile.name,
            heartbeat_interval=self.heartbeat_interval,
            capabilities=self._capabilities,
            runtime=self.inference.runtime_label,
            models=self.inference.inventory(),
            task_slots=self.profile.budgets.max_concurrent_tasks,
            task_inbox=self.config.task_inbox,
        )
        self._models_reported = hello.models
        self._models_reported_at = time.monotonic()
        payload = wire.encode("hello", hello)

        async def say_hello() -> None:
            await client.publish(self._topic("hello"), payload, qos=1)

        await say_hello()
        await self._event("link.connected")
        if self.deployer is not None:  # the hub moves roll-outs on from these
            for state in self.deployer.states():
                await client.publish(
                    self._topic("model_state"), wire.encode("model_state", state), qos=1
                )

        async def publish(topic: str, payload: bytes) -> None:
            await client.publish(topic, payload, qos=1)

        try:
            await self._session_tasks(client, publish, say_hello)
        except asyncio.CancelledError:
            # A clean stop sends no will: say goodbye ourselves so the hub knows at once.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                await asyncio.wait_for(
                    client.publish(
                        self._topic("status"), self._status(online=False), qos=1, retain=True
                    ),
                    GOODBYE_TIMEOUT_S,
                )
            raise

    async def _session_tasks(
        self,
        client: aiomqtt.Client,
        publish: Callable[[str, bytes], Awaitable[None]],
        say_hello: Callable[[], Awaitable[None]],
    ) -> None:
        assert self.uploader is not None
        self._client = client
        try:
            # A lost link surfaces from whichever task noticed first, as itself.
            await supervise(
                {
                    "agent.heartbeats": self._heartbeats(client),
                    "agent.receive": self._receive(client),
                    "agent.uploader": self.uploader.run(publish, say_hello),
                }
            )
        finally:
            self._client = None

    async def _notify_tasks(self, updates: list[wire.TaskUpdate]) -> None:
        """Tell the hub what became of assignments, if connected; never waits for it.

        Sent in the background so a slow link never holds up the inbox. Lost while
        offline: the hub then either lapses the assignment or takes the result itself
        as the answer (a result implies the task was accepted and ran)."""
        client = self._client
        if client is None or not updates:
            return
        self._send_soon(client, "task_state", wire.TaskState(updates=updates))

    async def _report_model(self, state: wire.ModelState) -> None:
        """Tell the hub what became of a model release, if connected (the states are
        sent again after each hello, so one lost offline is not lost for good)."""
        client = self._client
        if client is not None:
            self._send_soon(client, "model_state", state)

    def _send_soon(self, client: aiomqtt.Client, kind: str, body: wire.Body) -> None:
        payload = wire.encode(kind, body)

        async def send() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self._topic(kind), payload, qos=1)

        sending = asyncio.create_task(send(), name=f"agent.{kind}")
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            assert self.store is not None
            assert self.inference is not None
            try:
                load = await asyncio.to_thread(self._sampler.sample)
                stats = await self.store.stats()
            except (OSError, StoreReadError) as exc:  # a failing disk must not end the link
                logger.warning("heartbeat skipped: %s", exc)
                continue
            self._last_load = load
            beat = wire.Heartbeat(
                conn=self._conn,
                uptime_s=time.monotonic() - self._started,
                heartbeat_interval=self.heartbeat_interval,
                load=load,
                store=store_report(stats),
                models=self._models_if_changed(),
                tasks=self.tasks.load() if self.tasks else None,
                policy=self.policy.report() if self.policy else None,
            )
            # QoS 0, as telemetry usually is: the next heartbeat replaces a lost one, and
            # at QoS 1 every heartbeat of the fleet cost the hub's one broker connection
            # a PUBACK, which a Mosquitto reads one per pass over its sockets (the fleet
            # size a hub held was bounded by that, not by the hub's work).
            await client.publish(self._topic("heartbeat"), wire.encode("heartbeat", beat), qos=0)

    def _models_if_changed(self) -> list[wire.ModelInfo] | None:
        """The inventory when it differs from the last one reported (hello always carries
        it), and again every `MODELS_REFRESH_S`: heartbeats stay small on metered links,
        and a report the hub lost (a replica died holding it) is repaired soon."""
        assert self.inference is not None
        current = self.inference.inventory()
        now = time.monotonic()
        if current == self._models_reported and now - self._models_reported_at < MODELS_REFRESH_S:
            return None
        self._models_reported, self._models_reported_at = current, now
        return current

    async def _receive(self, client: aiomqtt.Client) -> None:
        assert self.uploader is not None
        async for message in client.messages:
            try:
                _, _, kind = wire.parse_topic(message.topic.value)
                envelope = wire.decode(message.payload, kinds=wire.DOWN_KINDS, expected_kind=kind)
            except wire.WireError as exc:
                logger.warning("ignored a message on %s: %s", message.topic.value, exc)
                continue
            body = envelope.body
            if isinstance(body, wire.Ack):
                await self.uploader.on_ack(body)
            elif isinstance(body, wire.Tasks) and self.tasks is not None:
                await self.tasks.assign(body)
            elif isinstance(body, wire.Cancel) and self.tasks is not None:
                await self.tasks.cancel(body)
            elif isinstance(body, wire.ModelReleases) and self.deployer is not None:
                await self.deployer.offer(body)  # downloads run in the deployer's task
            elif isinstance(body, wire.SignedPolicy) and self.policy is not None:
                # Verifying and writing it to disk block: off the loop. Applying only
                # sets plain attributes, so it may run there too.
                await asyncio.to_thread(self.policy.receive, body)

    async def _own_metrics(self) -> None:
        """Write one roll-up to the metrics stream every interval, online or not: the
        device's load, store fill, task counts, errors and per-model inference counts.

        The window's start outlives the process (`MetricsWindow`): an agent restarted
        more often than the interval still rolls up. After a kill the first roll-up
        closes out the window the killed process began, with its period since then, but
        only what is measured at roll-up time (load, store fill, queue depths) and what
        this process counted: the killed one's inference and task counts were in memory,
        and are lost. A graceful stop writes the partial window's roll-up instead."""
        assert self.store is not None
        assert self.inference is not None
        store, inference = self.store, self.inference
        window = MetricsWindow(self.paths.metrics_window)
        await asyncio.to_thread(window.resume)
        done = failed = 0  # the task runner's totals at the last roll-up

        async def measure() -> dict[str, Any] | None:
            """The roll-up of the window so far, which closes it; None if the device or
            the store could not be read (the window stays open, counts carry on)."""
            nonlocal done, failed
            try:
                load = await asyncio.to_thread(self._sampler.sample)
                stats = await store.stats()
            except (OSError, StoreReadError) as exc:
                logger.warning("metrics roll-up skipped: %s", exc)
                return None
            self._last_load = load
            tasks = {"done": 0, "failed": 0, "queued": 0, "running": 0}
            if self.tasks is not None:
                t = self.tasks
                tasks = {
                    "done": t.done - done,
                    "failed": t.failed - failed,
                    "queued": t.queued,
                    "running": t.running,
                }
                done, failed = t.done, t.failed
            models, errors = inference.tally.take()
            return rollup.record(
                period_s=window.close(),
                load=load,
                store=stats,
                tasks=tasks,
                models=models,
                errors=errors,
            )

        async def keep(record: dict[str, Any]) -> bool:
            """Store the roll-up; False if the disk refused it."""
            try:
                await store.append("metrics", [record])
            except StreamFullError:  # metrics roll up; never refused
                pass
            except StoreWriteError as exc:  # a full or failing disk must not stop the agent
                logger.warning("metrics roll-up not recorded: %s", exc.reason)
                return False
            return True

        try:
            while True:
                await asyncio.sleep(window.due_in(self.metrics_interval))
                record = await measure()
                if record is None:
                    await asyncio.sleep(self.metrics_interval)  # not again at once
                    continue
                await keep(record)
                # Only after the record is stored: a kill in between makes the next
                # process close this window again (its period counted twice, no counts).
                await asyncio.to_thread(window.save)
        except asyncio.CancelledError:
            # The agent stops: supervise cancels this task before `run` closes the store,
            # so the partial window can still be written. Best effort: the shutdown
            # cancels again after a while, and the kept window then stays for the next
            # start to close out, as after a kill (a record already queued is committed
            # when the store closes).
            with contextlib.suppress(StoreClosedError):  # the shutdown went on without it
                record = await measure()
                if record is not None and await keep(record):
                    await asyncio.to_thread(window.forget)
            raise

    def _apply_policy(self, p: policy.Policy, sets: dict[str, Any]) -> None:
        """Run on a verified policy's fields over the agent's own settings."""
        e = effective.resolve(self.config, p, sets)
        self.heartbeat_interval = e.heartbeat_interval
        self.metrics_interval = e.metrics_interval
        logging.getLogger().setLevel(e.log_level)
        self.masker.set_rules(e.mask_drop, e.mask_hash)
        self._caps = e.caps
        if self.inference is not None:
            self.inference.reporting = e.reporting
            self.inference.allowed_models = e.allowed_models
        if self.tasks is not None:
            self.tasks.allowed_models = e.allowed_models
        if self.uploader is not None:
            self.uploader.set_pacing(e.rate_bytes_per_s, e.sync_windows)
        if self.store is not None:
            self.store.set_bounds(e.bounds)

    def _overloaded(self) -> str | None:
        return self._caps.refusal(self._last_load)

    async def _event(self, name: str, **details: Any) -> None:
        assert self.store is not None
        try:
            await self.store.append("events", [{"event": name, **details}])
        except (StreamFullError, StoreWriteError) as exc:
            logger.warning("event %s not recorded: %s", name, exc.reason)

    def _topic(self, kind: str) -> str:
        return wire.up_topic(self.identity.device_id, kind)

    def _status(self, *, online: bool) -> bytes:
        return wire.encode("status", wire.Status(conn=self._conn, online=online))


def store_report(stats: dict[str, Any]) -> wire.StoreReport:
    """The heartbeat's view of the store's `stats`."""
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
