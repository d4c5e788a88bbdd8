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
A broker reloaded without a replica while it runs is not noticed: it is asked at start
only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from typing import Any, cast

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from hub.mqtt import sessions
from outpost import backoff, wire
from outpost.mqtt import LinkState

logger = logging.getLogger(__name__)

PROBE_KIND = "probe"
# How long the probe may take to come back: a loaded broker on a slow machine answers
# in well under a second. Mosquitto and EMQX refuse it at once (PUBACK "Not
# authorized"); the wait is for a broker that takes it and drops it.
PROBE_TIMEOUT_S = 10.0
RETRY_S = 30.0  # between probes while the broker does not list the replica
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
    refused = _refusals(client)
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


def _refusals(client: aiomqtt.Client) -> list[str]:
    """The reasons of the PUBACKs that refuse a publish, as they come: aiomqtt drops
    them, so this wraps its paho callback (as hub/mqtt/link.py's `_on_resumed` does)."""
    refused: list[str] = []
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
            refused.append(str(code))
        on_publish(paho_client, userdata, mid, code, properties)

    paho.on_publish = on_publish_checked
    return refused


async def until_listed(
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
    """Return once the broker lists the replica (`unlisted_because` says None);
    meanwhile keep `link`'s state saying why it waits, and set `unlisted` once it is
    known to wait on the operator. The waits are the module's unless given."""
    retry_s = RETRY_S if retry_s is None else retry_s
    probe_timeout_s = PROBE_TIMEOUT_S if probe_timeout_s is None else probe_timeout_s
    reconnect = backoff.Reconnect(cap=RECONNECT_CAP_S)
    address = f"{host}:{port}"
    while True:
        try:
            why = await unlisted_because(host, port, cn, context, timeout_s=probe_timeout_s)
        except aiomqtt.MqttError as exc:
            link.set("disconnected", f"{address}: {str(exc) or type(exc).__name__}")
            await asyncio.sleep(reconnect.next_delay())
            continue
        if why is None:
            return
        reconnect.reset()
        link.set(
            "unlisted",
            f"the broker at {address} does not list replica {replica_id} (certificate CN "
            f"{cn}) in its ACL: {why}. It may not publish to devices, and would lose its "
            "share of their messages, so it takes none. Write the broker's files with "
            f"`outpost-hub broker-config --replica {replica_id}` (every replica named) and "
            f"reload the broker; asked again every {retry_s:g} s",
            level=logging.ERROR,
        )
        if unlisted is not None:
            unlisted.set()
        await asyncio.sleep(retry_s)
