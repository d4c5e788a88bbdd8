"""The agent's MQTT session with its hub: each connection's client, then on it the
subscription, the hello, and for the life of the connection heartbeats, the drain of the
store and the dispatch of what comes down (acknowledgements, tasks, model releases,
policies).

`outpost.mqtt.run_forever` reconnects; each connection is one `Session.run`. Task and
model states go out through the `Outbox`, on whichever connection is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import AgentConfig
from edge.identity import Identity
from edge.parts import AgentParts
from edge.profile import DeviceProfile
from edge.refusal import Client, Refusals
from edge.renewal import ClientTls
from edge.store import StoreReadError
from edge.telemetry import Telemetry
from edge.tuning import Tuning
from outpost import __version__, wire
from outpost.aio import supervise
from outpost.mqtt import NODELAY
from outpost.mqttmessages import Messages
from outpost.mqttwrite import write_at_once
from outpost.wire import packing

logger = logging.getLogger(__name__)

GOODBYE_TIMEOUT_S = 2.0
# The broker keeps the agent's subscription (and queued acknowledgements) this long.
SESSION_EXPIRY_S = 24 * 3600
MQTT_LOGGER = "mqtt.agent"  # aiomqtt's and paho's lines


class Outbox:
    """Task and model states for the hub, sent on the connection of the moment.

    Made before the task runner and the deployer, which report through it, and before
    the session, which needs them: so the session attaches each connection here."""

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._client: aiomqtt.Client | None = None  # None: not connected now
        self._sending: set[asyncio.Task[None]] = set()  # kept referenced until sent

    @contextlib.contextmanager
    def connected(self, client: aiomqtt.Client) -> Iterator[None]:
        """Send on `client` while the block runs."""
        self._client = client
        try:
            yield
        finally:
            self._client = None

    async def task_states(self, updates: list[wire.TaskUpdate]) -> None:
        """Tell the hub what became of assignments, if connected; never waits for it.

        Sent in the background so a slow link never holds up the inbox. Lost while
        offline: the hub then either lapses the assignment or takes the result itself
        as the answer (a result implies the task was accepted and ran)."""
        client = self._client
        if client is None or not updates:
            return
        self._send_soon(client, "task_state", wire.TaskState(updates=updates))

    async def model_state(self, state: wire.ModelState) -> None:
        """Tell the hub what became of a model release, if connected (the states are
        sent again after each hello, so one lost offline is not lost for good)."""
        client = self._client
        if client is not None:
            self._send_soon(client, "model_state", state)

    def _send_soon(self, client: aiomqtt.Client, kind: str, body: wire.Body) -> None:
        payload = wire.encode(kind, body)
        topic = wire.up_topic(self._device_id, kind)

        async def send() -> None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, payload, qos=1)

        sending = asyncio.create_task(send(), name=f"agent.{kind}")
        self._sending.add(sending)
        sending.add_done_callback(self._sending.discard)


class Session:
    """One device's session with its hub, one connection at a time."""

    def __init__(
        self,
        config: AgentConfig,
        identity: Identity,
        profile: DeviceProfile,
        parts: AgentParts,
        *,
        broker: tuple[str, int],
        tls: ClientTls,
        refusals: Refusals,
        capabilities: wire.Capabilities,
        tuning: Tuning,
        telemetry: Telemetry,
        outbox: Outbox,
    ) -> None:
        self._config = config
        self._identity = identity
        self._profile = profile
        self._parts = parts
        self._host, self._port = broker
        self._tls = tls  # follows the certificate file across renewals
        self._refusals = refusals
        self._capabilities = capabilities
        self._tuning = tuning
        self._telemetry = telemetry
        self._outbox = outbox
        self._conn = ""  # the id of the latest connection, carried by its will
        self.welcomed = asyncio.Event()  # set once the hub first answered a hello

    def make_client(self) -> aiomqtt.Client:
        """Make the client of the next connection, with a will of its own."""
        # Each connection gets its own id, carried by its will: the hub then ignores the
        # will of an old connection that lands after a newer one came up.
        self._conn = secrets.token_hex(6)
        will = aiomqtt.Will(
            topic=self._topic("status"), payload=self._status(online=False), qos=1, retain=True
        )
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        client = Client(
            self._host,
            self._port,
            identifier=self._identity.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=self._tls.current(),  # a stat; reloads only after a renewal
            will=will,
            keepalive=self._config.keepalive,
            socket_options=NODELAY,
            clean_start=False,
            properties=properties,
            max_inflight_messages=max(20, self._config.sync.in_flight),
            logger=logging.getLogger(MQTT_LOGGER),
            refused=self._refusals.new_attempt(),
        )
        write_at_once(client)  # a result's batch leaves as it is published
        return client

    async def _unaligned_store(self) -> str:
        """The store's id while one of its streams is not yet numbered after the hub's
        mark (the hub may have taken its records by courier bundle: see wire.Ack), else
        empty, as it is when the store cannot be read (the hello goes out regardless)."""
        store = self._parts.store
        try:
            if (await store.aligned()).issuperset(wire.STREAMS):
                return ""
            return await store.store_id()
        except StoreReadError as exc:
            logger.warning("the hello names no store: %s", exc.reason)
            return ""

    async def run(self, client: aiomqtt.Client) -> None:
        """Say hello on a new connection, then serve it until it ends."""
        parts = self._parts
        parts.uploader.encoder.compress_with(None)  # plain until the hub accepts an encoding again
        await client.subscribe(wire.down_topic(self._identity.device_id, "#"), qos=1)
        await client.publish(self._topic("status"), self._status(online=True), qos=1, retain=True)
        hello = wire.Hello(
            conn=self._conn,
            agent_version=__version__,
            profile=self._profile.name,
            heartbeat_interval=self._tuning.heartbeat_interval,
            capabilities=self._capabilities,
            runtime=parts.inference.runtime_label,
            models=self._telemetry.models_for_hello(),
            task_slots=parts.tasks.slots,
            task_inbox=parts.tasks.capacity,
            compression=list(self._config.sync.compression),
            store=await self._unaligned_store(),
            sealed_offers=True,  # edge/deploy.py checks each offer's seal
        )
        payload = wire.encode("hello", hello)

        async def say_hello() -> None:
            await client.publish(self._topic("hello"), payload, qos=1)

        await say_hello()
        await self._telemetry.event("link.connected")
        # The hub moves roll-outs on from these (the agent's own: those that failed).
        for state in [*parts.deployer.states(), *parts.updater.states()]:
            await client.publish(
                self._topic("model_state"), wire.encode("model_state", state), qos=1
            )

        async def publish(topic: str, payload: bytes) -> None:
            await client.publish(topic, payload, qos=1)

        async def send_beat(beat: wire.Heartbeat) -> None:
            # QoS 0, as telemetry usually is: the next heartbeat replaces a lost one, and
            # at QoS 1 every heartbeat of the fleet cost the hub's one broker connection
            # a PUBACK, which a Mosquitto reads one per pass over its sockets (the fleet
            # size a hub held was bounded by that, not by the hub's work).
            await client.publish(self._topic("heartbeat"), wire.encode("heartbeat", beat), qos=0)

        try:
            with self._outbox.connected(client):
                # A lost link surfaces from whichever task noticed first, as itself.
                await supervise(
                    {
                        "agent.heartbeats": self._telemetry.heartbeats(self._conn, send_beat),
                        "agent.receive": self._receive(client),
                        "agent.uploader": parts.uploader.run(publish, say_hello),
                    }
                )
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

    async def _receive(self, client: aiomqtt.Client) -> None:
        """Hand each message from the hub to the part it is for."""
        parts = self._parts
        async for message in Messages(client):
            try:
                _, _, kind = wire.parse_topic(message.topic.value)
                envelope = wire.decode(message.payload, kinds=wire.DOWN_KINDS, expected_kind=kind)
            except wire.WireError as exc:
                logger.warning("ignored a message on %s: %s", message.topic.value, exc)
                continue
            body = envelope.body
            if isinstance(body, wire.Ack):
                await parts.uploader.on_ack(body)
            elif isinstance(body, wire.Tasks):
                await parts.tasks.assign(body)
            elif isinstance(body, wire.Cancel):
                await parts.tasks.cancel(body)
            elif isinstance(body, wire.ModelReleases):
                await parts.deployer.offer(body)  # downloads run in the deployer's task
            elif isinstance(body, wire.AgentOffer):
                await parts.updater.offer(body)  # so do the agent's, in the updater's
            elif isinstance(body, wire.Welcome):
                self._welcomed(body)
            elif isinstance(body, wire.SignedPolicy):
                # Verifying and writing it to disk block: off the loop; the agent applies
                # it on the loop (edge/agent.py), before this call returns here.
                await asyncio.to_thread(parts.policy.receive, body)

    def _welcomed(self, welcome: wire.Welcome) -> None:
        """Compress batches as the hub said it accepts, if it said so for this connection
        (a welcome queued for an earlier one says nothing of this one)."""
        if welcome.conn != self._conn:
            logger.debug("ignored a welcome for connection %s", welcome.conn)
            return
        self.welcomed.set()
        encoding = packing.choose(self._config.sync.compression, welcome.compression)
        self._parts.uploader.encoder.compress_with(encoding)
        logger.info("upload batches on this connection: %s", encoding or "plain")

    def _topic(self, kind: str) -> str:
        return wire.up_topic(self._identity.device_id, kind)

    def _status(self, *, online: bool) -> bytes:
        return wire.encode("status", wire.Status(conn=self._conn, online=online))
