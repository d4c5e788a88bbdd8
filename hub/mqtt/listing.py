"""Whether the broker's ACL lists this hub replica, proven before the replica joins the
devices' shared subscription.

Mosquitto grants a subscription whatever its ACL and checks read access as it delivers:
a replica the ACL does not name (added to the fleet, the broker's files not written again
for it) joins the share group, is handed its share of the devices' messages, and the
broker drops each one unread. Devices resend what is not acknowledged, but their messages
go missing and come late, one in N of them, and nothing says why. (EMQX refuses such a
subscription: the replica then gets nothing, and nothing says why either.)

So a replica first does what only a listed hub may: it publishes to its own `down` topic
(a hub writes every device's `down/#`, a device or an unlisted name none) and reads it
back (every client reads its own `down/#`: hub/broker/mosquittoconf.py, `emqx_acl` in
hub/broker/brokerconfig.py). An MQTT 5 broker refuses the publish at once (PUBACK "Not
authorized"); the read-back catches one that takes and drops it. Until the probe comes
back the replica stays out of the group, its link's state says why (and is its systemd
status line), and it asks again every `RETRY_S`: the operator's fix (`outpost-hub
broker-config --replica ID`, then reloading the broker) is taken up without a restart.
A broker reloaded without a replica while it runs (its files written again, a replica
left out) is noticed on the link itself (`ListingWatch`): a publish of the replica's that
the broker refuses as not authorized (a downlink, or the same probe, published every
`RECHECK_S` when nothing else is), or a subscription it refuses, ends the link, and the
replica is asked again before it rejoins.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Callable, Sequence
from typing import Any, cast

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.mqtt import sessions
from outpost import backoff, wire
from outpost.aio import wait_event
from outpost.mqtt import LinkState

logger = logging.getLogger(__name__)

PROBE_KIND = "probe"
NOT_AUTHORIZED = "Not authorized"  # the MQTT 5 reason (0x87) an ACL's refusal gives
# How long the probe may take to come back: a loaded broker on a slow machine answers
# in well under a second. Mosquitto and EMQX refuse it at once (PUBACK "Not
# authorized"); the wait is for a broker that takes it and drops it.
PROBE_TIMEOUT_S = 10.0
RETRY_S = 30.0  # between probes while the broker does not list the replica
# How often a listed replica's link, idle of downlinks, publishes the probe again: the
# longest a broker reloaded without it goes unnoticed (its share of device messages
# dropped meanwhile, and resent by the devices).
RECHECK_S = 60.0
RECONNECT_CAP_S = 10.0  # between attempts while the broker cannot be reached


async def unlisted_because(
    host: str, port: int, cn: str, context: ssl.SSLContext, *, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """None if the broker delivers what `cn` publishes to its own `down` topic back to
    it, else what it did instead; `aiomqtt.MqttError` if it cannot be reached or refuses
    the connection. The connection has a clean start and no session; run before the
    link's own (a broker naming clients by their CN would take one over with the
    other, as it takes over the session of an old instance of the replica)."""
    topic = wire.down_topic(cn, PROBE_KIND)
    nonce = secrets.token_bytes(16)
    client = sessions.errand_client(host, port, cn, context, timeout_s=timeout_s)
    refused: list[str] = []  # the probe's PUBACK's reason, if it refused it
    watch_refusals(client, refused.append)
    connected = False
    verdict: list[str | None] = []  # once there is one
    try:
        async with client:
            connected = True
            await client.subscribe(topic, options=SubscribeOptions(qos=1))
            await client.publish(topic, nonce, qos=1)
            verdict.append(await _came_back(client, nonce, refused, timeout_s))
    except aiomqtt.MqttError as exc:
        if verdict:  # only the disconnect after it failed
            return verdict[0]
        if not connected:
            raise
        if refused:
            return f"the broker refused the probe ({refused[0]})"
        # Closed at the probe (EMQX does so with deny_action = disconnect).
        return f"the broker closed the connection at the probe ({exc})"
    return verdict[0]


async def _came_back(
    client: aiomqtt.Client, nonce: bytes, refused: list[str], timeout_s: float
) -> str | None:
    if refused:
        return f"the broker refused the probe ({refused[0]})"
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                if message.payload == nonce:
                    return None
    except TimeoutError:
        pass
    return f"the broker took the probe and did not deliver it within {timeout_s:g} s"


def watch_refusals(client: aiomqtt.Client, on_refused: Callable[[str], None]) -> None:
    """Pass the reason of each PUBACK that refuses a publish to `on_refused`, as it comes:
    aiomqtt drops them, so this wraps its paho callback (as hub/mqtt/link.py's
    `_on_resumed` does). Before the client connects; the callback runs before the
    refused publish returns."""
    paho = client._client  # aiomqtt keeps the paho client it drives here
    on_publish = cast(mqtt.CallbackOnPublish_v2, paho.on_publish)

    def on_publish_checked(
        paho_client: mqtt.Client,
        userdata: Any,
        mid: int,
        code: ReasonCode,
        properties: Properties,
    ) -> None:
        if code.is_failure:
            on_refused(str(code))
        on_publish(paho_client, userdata, mid, code, properties)

    paho.on_publish = on_publish_checked


def _say_unlisted(
    link: LinkState,
    address: str,
    replica_id: str,
    cn: str,
    why: str,
    retry_s: float,
) -> None:
    link.set(
        "unlisted",
        f"the broker at {address} does not list replica {replica_id} (certificate CN "
        f"{cn}) in its ACL: {why}. It may not publish to devices, and would lose its "
        "share of their messages, so it takes none. Write the broker's files with "
        f"`outpost-hub broker-config --replica {replica_id}` (every replica named) and "
        f"reload the broker; asked again every {retry_s:g} s",
        level=logging.ERROR,
    )


class Relisting:
    """A replica's listing, proven before its link first connects (`until_listed`) and
    again after the link ended because the broker stopped listing it (`after_failure`,
    the hook `outpost.mqtt.run_forever` calls after each failed connection)."""

    def __init__(
        self,
        host: str,
        port: int,
        replica_id: str,
        cn: str,
        context: ssl.SSLContext,
        link: LinkState,
        *,
        unlisted: asyncio.Event | None = None,
        retry_s: float | None = None,
        probe_timeout_s: float | None = None,
    ) -> None:
        self._address = (host, port)
        self._replica_id = replica_id
        self.cn = cn
        self._context = context
        self._link = link
        self._unlisted = unlisted
        self._retry_s = retry_s
        self._probe_timeout_s = probe_timeout_s

    async def until_listed(self) -> None:
        """Return once the broker lists the replica (`unlisted_because` says None);
        meanwhile keep the link's state saying why it waits, and set `unlisted` once it
        is known to wait on the operator. The waits are the module's unless given."""
        host, port = self._address
        probe_timeout_s = (
            PROBE_TIMEOUT_S if self._probe_timeout_s is None else self._probe_timeout_s
        )
        reconnect = backoff.Reconnect(cap=RECONNECT_CAP_S)
        while True:
            try:
                why = await unlisted_because(
                    host, port, self.cn, self._context, timeout_s=probe_timeout_s
                )
            except aiomqtt.MqttError as exc:
                self._link.set("disconnected", f"{host}:{port}: {str(exc) or type(exc).__name__}")
                await asyncio.sleep(reconnect.next_delay())
                continue
            if why is None:
                return
            reconnect.reset()
            await self._wait_unlisted(why, self._unlisted)

    async def after_failure(self, error: aiomqtt.MqttError) -> bool:
        """After `UnlistedError`: say so, wait `retry_s` (a broker that refuses the link
        what the probe passes must not be asked in a tight loop), then wait for the
        listing; True (the link reconnects at once). Any other failure: False."""
        if not isinstance(error, UnlistedError):
            return False
        await self._wait_unlisted(str(error), None)
        await self.until_listed()
        return True

    async def _wait_unlisted(self, why: str, unlisted: asyncio.Event | None) -> None:
        """Say why the replica waits (and set `unlisted`), then wait `retry_s`."""
        host, port = self._address
        retry_s = RETRY_S if self._retry_s is None else self._retry_s
        _say_unlisted(self._link, f"{host}:{port}", self._replica_id, self.cn, why, retry_s)
        if unlisted is not None:
            unlisted.set()
        await asyncio.sleep(retry_s)


class UnlistedError(aiomqtt.MqttError):
    """The broker stopped listing the replica while its link ran: the link ends (a
    link error, so `Relisting.until_listed` is asked before the next connection)."""


class ListingWatch:
    """Notices, on a replica's live link, that the broker no longer lists it: one of its
    publishes refused as not authorized (a hub may write every device's `down/#`, so
    only an ACL that does not name it refuses one), or its subscription refused.

    Made with the link's client, before it connects. `probe` proves the listing on the
    live link before it joins the group; `watch` runs beside the link's reader and, once
    a publish is refused, ends the connection as a broker would (a DISCONNECT): the
    reader then stores what the broker had delivered and ends, and the session raises
    `UnlistedError` (`refused` says why). Cancelling the reader instead dropped a batch
    half stored and left the rest unread until the replica was listed again. The probe
    goes to the replica's own `down` topic, where nobody listens (the link reads only
    devices' `up`)."""

    def __init__(self, client: aiomqtt.Client, cn: str, *, every_s: float | None = None) -> None:
        self._client = client
        self._topic = wire.down_topic(cn, PROBE_KIND)
        self._every_s = RECHECK_S if every_s is None else every_s
        self.probes = 0  # published so far
        self._refused = asyncio.Event()
        self.refused = ""  # why the broker no longer lists the replica, once it is known
        watch_refusals(client, self._saw)

    def _saw(self, reason: str) -> None:
        if reason == NOT_AUTHORIZED and not self.refused:
            self.refused = f"the broker refused a publish ({reason})"
            self._refused.set()

    async def probe(self) -> None:
        """Publish the probe; `UnlistedError` if the broker refuses it (its PUBACK's
        callback runs before the publish returns)."""
        await self._client.publish(self._topic, b"", qos=1)
        self.probes += 1
        if self.refused:
            raise UnlistedError(self.refused)

    def check_subscription(self, granted: Sequence[int | ReasonCode]) -> None:
        """`UnlistedError` if the SUBACK refused the shared subscription (EMQX does for
        a name its ACL does not allow; Mosquitto grants it and drops the messages)."""
        for code in granted:
            if isinstance(code, ReasonCode) and code.is_failure:
                raise UnlistedError(f"the broker refused the subscription ({code})")

    async def watch(self) -> None:
        """Probe every `every_s` (any refused publish of the link's counts at once) until
        the broker refuses one, then end the connection; return then, or once the
        connection ends otherwise (the reader says how)."""
        while not await wait_event(self._refused, self._every_s):
            try:
                await self.probe()
            except UnlistedError:
                break
            except aiomqtt.MqttError:  # a publish that timed out, or the link going down
                if self._client._disconnected.done():
                    return
        self._client._client.disconnect()  # aiomqtt keeps the paho client it drives here
