"""The agent daemon: connect with the device certificate, say hello, send heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import time
from typing import NoReturn

import aiomqtt

from edge import sysinfo
from edge.config import AgentConfig
from edge.identity import DevicePaths, Identity
from edge.profile import DeviceProfile
from outpost import __version__, tls, wire
from outpost.mqtt import NODELAY, LinkState, run_forever
from outpost.settings import parse_broker_url

logger = logging.getLogger(__name__)

GOODBYE_TIMEOUT_S = 2.0


class Agent:
    """One device's link to its hub."""

    def __init__(
        self, paths: DevicePaths, config: AgentConfig, identity: Identity, profile: DeviceProfile
    ) -> None:
        self.paths = paths
        self.config = config
        self.identity = identity
        self.profile = profile
        self.link = LinkState(logger, "broker link")
        self._started = time.monotonic()
        self._conn = ""
        self._context: ssl.SSLContext | None = None
        self._host, self._port = parse_broker_url(
            config.broker or identity.broker_url, "broker url"
        )

    async def run(self) -> NoReturn:
        """Run until cancelled: connect, reconnect forever."""
        self._context = await asyncio.to_thread(
            tls.client_context, self.paths.ca_cert, self.paths.cert, self.paths.key
        )
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
        await run_forever(
            self._make_client,
            self._session,
            self.link,
            address=f"{self._host}:{self._port}",
            backoff_cap=self.config.reconnect_max_delay,
        )

    def _make_client(self) -> aiomqtt.Client:
        # Each connection gets its own id, carried by its will: the hub then ignores the
        # will of an old connection that lands after a newer one came up.
        self._conn = secrets.token_hex(6)
        will = aiomqtt.Will(
            topic=self._topic("status"), payload=self._status(online=False), qos=1, retain=True
        )
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=self.identity.device_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=self._context,
            will=will,
            keepalive=self.config.keepalive,
            socket_options=NODELAY,
            logger=logging.getLogger("mqtt.agent"),
        )

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.publish(self._topic("status"), self._status(online=True), qos=1, retain=True)
        hello = wire.Hello(
            conn=self._conn,
            agent_version=__version__,
            profile=self.profile.name,
            heartbeat_interval=self.config.heartbeat_interval,
            capabilities=self._capabilities,
        )
        await client.publish(self._topic("hello"), wire.encode("hello", hello), qos=1)
        try:
            while True:
                await asyncio.sleep(self.config.heartbeat_interval)
                load = await asyncio.to_thread(self._sampler.sample)
                beat = wire.Heartbeat(
                    conn=self._conn,
                    uptime_s=time.monotonic() - self._started,
                    heartbeat_interval=self.config.heartbeat_interval,
                    load=load,
                )
                await client.publish(
                    self._topic("heartbeat"), wire.encode("heartbeat", beat), qos=1
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

    def _topic(self, kind: str) -> str:
        return wire.up_topic(self.identity.device_id, kind)

    def _status(self, *, online: bool) -> bytes:
        return wire.encode("status", wire.Status(conn=self._conn, online=online))
