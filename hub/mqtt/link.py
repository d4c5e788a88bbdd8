"""The hub's MQTT session: subscribe to every device's `up` topics and feed the ingest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, Protocol, cast

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.broker.sharegroup import shared_topic
from hub.config import HubConfig
from hub.fleet import throwaway
from hub.mqtt import charge, listing, sessions
from hub.mqtt.acks import LinkDownError
from hub.mqtt.ingest import Ingest
from hub.mqtt.intake import DeviceIntake, queue_type
from hub.mqtt.readahead import read_all_available
from hub.paths import HUB_CLIENT_CN, HubPaths, link_cn
from outpost import mqttwrite, tls, wire
from outpost.aio import cancel_until_done
from outpost.mqtt import NODELAY, LinkState, run_forever
from outpost.mqttmessages import Messages
from outpost.mqttwrite import write_at_once

logger = logging.getLogger(__name__)

# The broker keeps the hub's subscription and queues QoS 1 messages for this long while
# the hub is away (a restart, an upgrade), so nothing sent meanwhile is lost.
SESSION_EXPIRY_S = 7 * 24 * 3600
# A replica keeps no session: a broker goes on routing a shared subscription's share of
# device messages to a member whose session outlives its connection (Mosquitto does),
# where they wait for its return or are dropped when the session ends. With none, the
# group shrinks the moment a replica's connection drops and the others take everything.
# Messages a replica held in memory when it died are lost as with any crash: devices
# send unacknowledged batches again (sync.ack_timeout_s), and their hellos and
# inventories repair task and roll-out state (`RolloutService.on_inventory`).
REPLICA_SESSION_EXPIRY_S = 0
RECONNECT_CAP_S = 10.0
# Messages applied per store call: large enough to amortise the thread hop, small
# enough that a batch never holds the event loop for long.
MAX_BATCH = 500
# And bytes, as the intake charges them (hub/mqtt/charge.py: a compressed batch at its
# decompressed size): a batch's records are checked on the event loop and stored in one
# transaction. Agents' record batches reach 200 KiB plain (edge/batchsize.py): 4 MiB is
# about a hundred thousand records, half a second of the hub's store.
MAX_BATCH_BYTES = 4 << 20
# The link's certificate outlives any run of the hub (the CA's own expiry bounds it).
LINK_CERT_DAYS = 825
PENDING_CALLS_WARNING = 10_000


class Queued(Protocol):
    """What `take_batch` reads: the link's messages (outpost/mqttmessages.py; its length is
    what waits)."""

    def __len__(self) -> int: ...

    def __anext__(self) -> Awaitable[aiomqtt.Message]: ...


async def take_batch(
    first: aiomqtt.Message, messages: Queued, *, payload_limit: int
) -> list[tuple[str, Any]]:
    """`first` and what else is already queued, up to `MAX_BATCH` messages and about
    `MAX_BATCH_BYTES` of cost (hub/mqtt/charge.py, for an ingest that refuses what
    passes `payload_limit`): one store call for them all."""
    batch = [(first.topic.value, first.payload)]
    size = _cost(first, payload_limit)
    for _ in range(min(len(messages), MAX_BATCH - 1)):
        if size >= MAX_BATCH_BYTES:
            break
        queued = await anext(messages)
        batch.append((queued.topic.value, queued.payload))
        size += _cost(queued, payload_limit)
    return batch


def _cost(message: aiomqtt.Message, payload_limit: int) -> int:
    _, kind = charge.device_and_kind(message.topic.value)
    return charge.cost(kind, message.payload, payload_limit)


class HubLink:
    """Owns the hub's connection to the broker."""

    def __init__(
        self, paths: HubPaths, config: HubConfig, ingest: Ingest, intake: DeviceIntake
    ) -> None:
        self._paths = paths
        self._config = config
        self._ingest = ingest
        self.state = LinkState(logger, "hub link")
        self.client: aiomqtt.Client | None = None
        self._topic = wire.UP_WILDCARD  # a replica's: the group's (`run`)
        # Between the broker and the ingest; it outlives each connection, so budgets
        # and the messages already taken from the broker survive a reconnect.
        self.intake = intake
        self._unlisted = asyncio.Event()  # a replica waits for the broker to list it
        self._watch: listing.ListingWatch | None = None  # a replica's, on its live link

    async def started(self) -> None:
        """Return once the link is connected, or waits for the operator to list this
        replica in the broker's ACL (hub/mqtt/listing.py): either way the hub has done
        what it can to start (systemd's READY; the status line says which)."""
        waits = [
            asyncio.ensure_future(self.state.connected.wait()),
            asyncio.ensure_future(self._unlisted.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run(self) -> NoReturn:
        # Minting and loading certificates reads files: keep it off the event loop.
        replica = self._config.replica_id
        context = await asyncio.to_thread(_link_context, self._paths, link_cn(replica))
        # Replicas share the devices' messages: each reaches exactly one of them.
        if replica:
            self._topic = await asyncio.to_thread(shared_topic, self._paths, wire.UP_WILDCARD)
        host, port = self._config.broker_address
        relisting = None
        if replica:  # one the broker's ACL does not name must stay out of the group
            relisting = listing.Relisting(
                host, port, replica, link_cn(replica), context, self.state, unlisted=self._unlisted
            )
            await relisting.until_listed()
        else:
            await self._end_legacy_session(host, port)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = REPLICA_SESSION_EXPIRY_S if replica else SESSION_EXPIRY_S

        def make_client() -> aiomqtt.Client:
            client = aiomqtt.Client(
                host,
                port,
                identifier=link_cn(replica),
                protocol=aiomqtt.ProtocolVersion.V5,
                tls_context=context,
                clean_start=False,
                properties=properties,
                socket_options=NODELAY,
                keepalive=30,
                logger=logging.getLogger("mqtt.hub"),
                queue_type=queue_type(self.intake),
            )
            # A burst of hellos means a policy and a release publish per device, all in
            # flight at once: aiomqtt's default (warn past 10 pending calls) logged about
            # three warnings per connecting device during a ramp, of nothing wrong.
            client.pending_calls_threshold = PENDING_CALLS_WARNING
            # Only task assignments are written as they are queued (`publish(at_once=)`):
            # every packet written so cost the ingest 7-12 % of its throughput
            # (`./scripts/bench --only ingest`, alternating runs), and a lone task's
            # assignment otherwise waits for the rest of the request that made it.
            write_at_once(client, only_marked=True)
            read_all_available(client)  # every packet waiting, at each wake-up
            if relisting is None:  # a replica keeps no session: the broker replays nothing
                _on_resumed(client, self.intake.catch_up)
            else:  # a broker reloaded without the replica ends the link
                self._watch = listing.ListingWatch(client, relisting.cn)
            return client

        await run_forever(
            make_client,
            self._session,
            self.state,
            address=f"{host}:{port}",
            backoff_cap=RECONNECT_CAP_S,
            refusals=relisting,
        )

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry_s: int = 0,
        at_once: bool = False,
    ) -> None:
        """Publish QoS 1 through the live connection; `LinkDownError` if none. With
        `expiry_s`, the broker drops the message if it is not delivered within that long
        (MQTT 5 message expiry): a device's session may keep it for a day. With
        `at_once`, the packet is written to the socket before this returns to the loop
        (outpost/mqttwrite.py), not after whatever else is ready."""
        client = self.client
        if client is None:
            raise LinkDownError("the hub is not connected to the broker")
        properties = None
        if expiry_s:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.MessageExpiryInterval = expiry_s
        with mqttwrite.at_once() if at_once else contextlib.nullcontext():
            await client.publish(topic, payload, qos=1, retain=retain, properties=properties)

    async def _session(self, client: aiomqtt.Client) -> None:
        self.client = client
        try:
            # No retained messages at subscribe (retain handling 2): the hub's session
            # keeps what was sent while it was away, and a retained copy would be
            # replayed at every start (a device may retain anything on its topics).
            watch = self._watch
            if watch is not None:  # before it joins the group: the broker lists it still
                await watch.probe()
            granted = await client.subscribe(
                self._topic, options=SubscribeOptions(qos=1, retainHandling=2)
            )
            if watch is None:
                await self._take(client)
                return
            watch.check_subscription(granted)
            watching = asyncio.create_task(watch.watch(), name="hub.link.listing")
            watching.add_done_callback(_said_if_failed)
            try:
                await self._take(client)  # ends with the connection (the watch may end it)
            except aiomqtt.MqttError as exc:
                if watch.refused:
                    raise listing.UnlistedError(watch.refused) from exc
                raise
            finally:
                await cancel_until_done(watching)
        finally:
            self.client = None

    async def _take(self, client: aiomqtt.Client) -> None:
        messages = Messages(client)
        limit = self._config.max_payload_bytes
        async for message in messages:
            batch = await take_batch(message, messages, payload_limit=limit)
            await self._ingest.handle_batch(batch)

    async def _end_legacy_session(self, host: str, port: int) -> None:
        """End the persistent session a hub before `outpost-hub-link` kept under the
        certificate on disk: nobody resumes it, and the broker would queue every device
        message for it for a week. A clean start with no expiry ends it; best effort."""
        context = await asyncio.to_thread(
            tls.client_context,
            self._paths.ca_cert,
            self._paths.client_cert,
            self._paths.client_key,
        )
        failure = await sessions.connect_and_leave(host, port, HUB_CLIENT_CN, context)
        if failure is not None:
            logger.debug("could not end the legacy hub session: %s", failure)


def _said_if_failed(watching: asyncio.Task[None]) -> None:
    """Log a failure of the listing watch (a bug: it ends quietly on a link error): the
    link goes on unwatched until its next connection."""
    if not watching.cancelled() and (error := watching.exception()) is not None:
        logger.error("the broker listing watch stopped: %r", error, exc_info=error)


def _on_resumed(client: aiomqtt.Client, resumed: Callable[[], None]) -> None:
    """Call `resumed` when the broker accepts `client` with the session it kept (CONNACK
    session present): what it queued meanwhile comes next, at wire speed. aiomqtt does
    not pass the flag on, so this wraps its paho callback, which runs before the
    broker's first message is read (the CONNACK precedes it on the socket)."""
    paho = client._client  # aiomqtt keeps the paho client it drives here
    # aiomqtt's, for paho's callback API version 2 (which aiomqtt asks for).
    on_connect = cast(mqtt.CallbackOnConnect_v2, paho.on_connect)

    def on_connect_resumed(
        paho_client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not code.is_failure and flags.session_present:
            resumed()
        on_connect(paho_client, userdata, flags, code, properties)

    paho.on_connect = on_connect_resumed


def _link_context(paths: HubPaths, cn: str) -> ssl.SSLContext:
    """A client context with a certificate for the link's own CN, minted now: its key
    never leaves this process, and no other client holds one (hub/paths.py)."""
    cert, _ = throwaway.mint(paths, cn, days=LINK_CERT_DAYS)
    return throwaway.client_context(paths, cert)
