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
hub/broker/brokerconfig.py). Until the message comes back the replica stays out of the
group, its link's state says why, and it asks again every `RETRY_S`: the operator's fix
(`outpost-hub broker-config --replica ID`, then reloading the broker) is taken up without
a restart. A broker reloaded without a replica while it runs is not noticed: it is asked
at start only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from outpost import backoff, wire
from outpost.mqtt import LinkState

logger = logging.getLogger(__name__)

PROBE_KIND = "probe"
# How long the probe may take to come back: a loaded broker on a slow machine answers
# in well under a second; a refused one never does (Mosquitto drops the publish).
PROBE_TIMEOUT_S = 10.0
RETRY_S = 30.0  # between probes while the broker does not list the replica
RECONNECT_CAP_S = 10.0  # between attempts while the broker cannot be reached


async def is_listed(
    host: str, port: int, cn: str, context: ssl.SSLContext, *, timeout_s: float = PROBE_TIMEOUT_S
) -> bool:
    """Whether the broker delivers what `cn` publishes to its own `down` topic back to
    it; `aiomqtt.MqttError` if the broker cannot be reached or refuses the connection.
    The connection has a clean start and no session, and must not run beside the link's
    own (a broker that names clients by their CN would take one over with the other)."""
    topic = wire.down_topic(cn, PROBE_KIND)
    nonce = secrets.token_bytes(16)
    client = aiomqtt.Client(
        host,
        port,
        identifier=cn,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        timeout=timeout_s,
        logger=logging.getLogger("mqtt.hub"),
    )
    async with client:
        await client.subscribe(topic, options=SubscribeOptions(qos=1))
        await client.publish(topic, nonce, qos=1)
        try:
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    if message.payload == nonce:
                        return True
        except TimeoutError:
            pass
    return False


async def until_listed(
    host: str,
    port: int,
    replica_id: str,
    cn: str,
    context: ssl.SSLContext,
    link: LinkState,
    *,
    retry_s: float | None = None,
    probe_timeout_s: float | None = None,
) -> None:
    """Return once the broker lists the replica (`is_listed`); meanwhile keep `link`'s
    state saying why it waits. The waits are the module's unless given."""
    retry_s = RETRY_S if retry_s is None else retry_s
    probe_timeout_s = PROBE_TIMEOUT_S if probe_timeout_s is None else probe_timeout_s
    reconnect = backoff.Reconnect(cap=RECONNECT_CAP_S)
    address = f"{host}:{port}"
    while True:
        try:
            listed = await is_listed(host, port, cn, context, timeout_s=probe_timeout_s)
        except aiomqtt.MqttError as exc:
            link.set("disconnected", f"{address}: {str(exc) or type(exc).__name__}")
            await asyncio.sleep(reconnect.next_delay())
            continue
        if listed:
            return
        reconnect.reset()
        link.set(
            "unlisted",
            f"the broker at {address} does not list replica {replica_id} (certificate CN "
            f"{cn}) in its ACL: it may not publish to devices, and would lose its share of "
            "their messages, so it takes none. Write the broker's files with "
            f"`outpost-hub broker-config --replica {replica_id}` (every replica named) and "
            f"reload the broker; asked again every {retry_s:g} s",
            level=logging.ERROR,
        )
        await asyncio.sleep(retry_s)
