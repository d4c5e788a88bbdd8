"""Ending a device's MQTT session: a revoked device, or one held off for flooding.

Mosquitto checks the CRL only when a client connects (a SIGHUP reloads it but keeps open
connections), so listing a certificate is not enough to end a connection already open.
The managed broker names every client by its certificate's CN
(`use_username_as_clientid`), whatever client id it sends; so a second connection with
the device's CN takes the device's session over (MQTT session takeover) and the broker
closes the first. A device cannot dodge this by choosing another client id, and the hub
needs a certificate with that CN: a throw-away one (hub/fleet/throwaway.py), issued after the
CRL was written so that it is not listed in it yet.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiomqtt

from hub.config import HubConfig
from hub.fleet import throwaway
from hub.paths import HubPaths
from hub.store import HubStore

logger = logging.getLogger(__name__)

TAKEOVER_TIMEOUT_S = 5.0


async def take_over(paths: HubPaths, config: HubConfig, store: HubStore, device_id: str) -> bool:
    """Take `device_id`'s session over with a clean start (its queued messages go too) and
    leave at once; True if the broker accepted the takeover (whether or not the device
    was connected). The CRL must list the device before this, or it could reconnect."""
    cert = await throwaway.issue(paths, store, device_id, reason="takeover")
    context = await asyncio.to_thread(throwaway.client_context, paths, cert)
    host, port = config.broker_address
    # The identifier is what a broker without use_username_as_clientid goes by.
    failure = await connect_and_leave(host, port, device_id, context)
    if failure is not None:
        logger.info("could not take over the session of %s: %s", device_id, failure)
        return False
    logger.info("closed the broker session of %s", device_id)
    return True


async def connect_and_leave(
    host: str, port: int, identifier: str, context: ssl.SSLContext
) -> str | None:
    """Connect with a clean start and no session expiry, then leave: the session under
    `identifier` (the certificate's CN on the managed broker) ends. None if the broker
    accepted the connection, else what went wrong."""
    client = errand_client(host, port, identifier, context, timeout_s=TAKEOVER_TIMEOUT_S)
    try:
        async with asyncio.timeout(TAKEOVER_TIMEOUT_S * 2), client:
            pass
    except (aiomqtt.MqttError, ssl.SSLError, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    return None


def errand_client(
    host: str, port: int, identifier: str, context: ssl.SSLContext, *, timeout_s: float
) -> aiomqtt.Client:
    """An MQTT 5 client for a short errand of the hub's: a clean start, no session kept."""
    return aiomqtt.Client(
        host,
        port,
        identifier=identifier,
        tls_context=context,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=True,
        timeout=timeout_s,
        logger=logging.getLogger("mqtt.hub"),
    )
