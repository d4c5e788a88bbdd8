"""One MQTT session that reconnects forever, shared by the agent and the hub."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final, NoReturn, Protocol

import aiomqtt

from outpost import backoff, mqttprops

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
        self.detail = ""  # what the last `set` said of it
        self.since = time.time()  # when it entered its state (wall clock, for people)

    def set(self, state: str, detail: str = "", *, level: int = logging.WARNING) -> None:
        """Enter `state`; a change is logged (at `level` unless connected), a repeat not."""
        if state == "connected":
            self.connected.set()
        else:
            self.connected.clear()
        self.detail = detail
        if state == self.state:
            self._logger.debug("%s still %s: %s", self._name, state, detail)
            return
        self.state = state
        self.since = time.time()
        if state == "connected":
            self._logger.info("%s connected %s", self._name, detail)
        else:
            self._logger.log(level, "%s %s: %s", self._name, state, detail)


class Refusals(Protocol):
    """Tells a refusal that retrying soon cannot change (a revoked client certificate)
    from a passing link error."""

    async def after_failure(self, error: aiomqtt.MqttError) -> bool:
        """Called after each failed attempt. True: it was such a refusal, and the hook
        has said so, set the link's state and waited out its own, slower, retry; False:
        the usual back-off follows."""
        ...


# How long a connection must stay up for the link to count as back (see `run_forever`).
STABLE_S: Final = 60.0


async def run_forever(
    make_client: Callable[[], aiomqtt.Client],
    session: Callable[[aiomqtt.Client], Awaitable[None]],
    link: LinkState,
    *,
    address: str,
    backoff_cap: float,
    backoff_spread: float = 0.0,
    backoff_seed: str | None = None,
    refusals: Refusals | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> NoReturn:
    """Connect with a fresh client, run `session`, and on any link error start over.

    The client is rebuilt for each attempt because its last will can carry per-connection
    data. The first attempt is made at once; waits between later ones come from
    `backoff.Reconnect` (the first retry of an outage spread over `backoff_spread`
    seconds, then capped exponential jitter), except after a refusal that `refusals`
    recognises: it then waits as it sees fit. An outage begins afresh only after a
    connection that stayed up `STABLE_S`: one the broker accepts and drops at once (two
    agents on one device id, a cloned SD card, taking each other's session over) backed
    off no further than the first retry's spread, reconnecting every few seconds for ever.
    """
    mqttprops.lighten()  # every message read pays for paho's Properties otherwise
    retry = backoff.Reconnect(cap=backoff_cap, spread=backoff_spread, seed=backoff_seed)
    while True:
        client = make_client()
        connected_at: float | None = None
        try:
            async with client:
                connected_at = clock()
                link.set("connected", f"to {address}")
                await session(client)
                raise aiomqtt.MqttError("session ended")
        except aiomqtt.MqttError as exc:
            if refusals is not None and await refusals.after_failure(exc):
                retry.reset()  # it waited already; a later passing error starts afresh
                continue
            link.set("disconnected", str(exc) or type(exc).__name__)
        if connected_at is not None and clock() - connected_at >= STABLE_S:
            retry.reset()  # the link was back: this is a new outage
        await asyncio.sleep(retry.next_delay())
