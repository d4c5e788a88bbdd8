"""One MQTT session that reconnects forever, shared by the agent and the hub."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn

import aiomqtt

from outpost import backoff

# Without TCP_NODELAY a TLS record and the broker's delayed ACK wait on each other
# (Nagle), which caps QoS 1 publishes at a few dozen per second.
NODELAY: Final = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class LinkState:
    """Remembers the link's state so that each change is logged once, not every retry."""

    def __init__(self, logger: logging.Logger, name: str) -> None:
        self._logger = logger
        self._name = name
        self.connected = asyncio.Event()
        self.state = "starting"

    def set(self, state: str, detail: str = "") -> None:
        if state == "connected":
            self.connected.set()
        else:
            self.connected.clear()
        if state == self.state:
            self._logger.debug("%s still %s: %s", self._name, state, detail)
            return
        self.state = state
        if state == "connected":
            self._logger.info("%s connected %s", self._name, detail)
        else:
            self._logger.warning("%s %s: %s", self._name, state, detail)


async def run_forever(
    make_client: Callable[[], aiomqtt.Client],
    session: Callable[[aiomqtt.Client], Awaitable[None]],
    link: LinkState,
    *,
    address: str,
    backoff_cap: float,
) -> NoReturn:
    """Connect with a fresh client, run `session`, and on any link error start over.

    The client is rebuilt for each attempt because its last will can carry per-connection
    data. Waits between attempts are capped and jittered.
    """
    attempt = 0
    while True:
        client = make_client()
        try:
            async with client:
                attempt = 0
                link.set("connected", f"to {address}")
                await session(client)
                raise aiomqtt.MqttError("session ended")
        except aiomqtt.MqttError as exc:
            link.set("disconnected", str(exc) or type(exc).__name__)
        await asyncio.sleep(backoff.delay(attempt, cap=backoff_cap))
        attempt += 1
