"""RabbitMQ sink: each event published to a durable topic exchange with routing key
`outpost.<area>.<what>.<device>`, persistent, and confirmed by the broker.

Messages carry `message_id = <event id>` (the dedupe key: AMQP has no broker-side
dedupe, so events published again after a crash reach consumers again with the same
id), `content_type = application/cloudevents+json`, `type = <event type>` and the
event's time as `timestamp`. The exchange routes by the key's wildcards
(`outpost.task.#`, `outpost.*.*.dev-1`); as RabbitMQ does, it drops what no queue is
bound to: integrators bind durable queues before events they need are published.

Order. One publish at a time, each confirm awaited before the next is sent: with a
durable queue bound, ~1k events/s on a 2-core machine, where confirms pipelined reach
~3k (the broker confirms a persistent message once it is on disk). Yet a broker nacks
one message and takes the next when a queue bound to the exchange overflows with
`reject-publish` while its consumer frees room: with several publishes in flight, a
later event would be stored ahead of an earlier one sent again. Per-device order is the
promise, so it is kept.

Connection. No reconnection of its own: a lost connection fails the publish, and the
drain makes a new sink with its own back-off. Credentials come from `credentials_file`
(USER:PASSWORD), never from the URL in hub.toml.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from yarl import URL

from hub.sinks.base import CONTENT_TYPE, Event, EventRefusedError, SinkError
from hub.sinks.config import SinkConfig, check_bus_url, shown, user_password

logger = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "outpost"
NOT_ALLOWED = 530  # connection.close: the user may not use the vhost
# What a lost connection or channel raises (ChannelInvalidStateError: a closed channel).
CHANNEL_FAILURES = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)


def describe(exc: BaseException) -> str:
    """What went wrong, in words (aiormq's reprs name objects and addresses)."""
    if isinstance(exc, aiormq.exceptions.ChannelInvalidStateError):
        return "the channel is closed"
    if isinstance(exc, aiormq.exceptions.ConnectionClosed) and len(exc.args) >= 2:
        return f"the broker closed the connection: {exc.args[1]}"
    if isinstance(exc, aiormq.exceptions.ChannelClosed) and len(exc.args) >= 2:
        return f"the broker closed the channel: {exc.args[1]}"
    return " ".join(str(a) for a in exc.args if a is not None) or type(exc).__name__


def timestamp(event: Event) -> datetime.datetime | None:
    """The event's time, for the message's `timestamp` (None if it does not parse)."""
    try:
        return datetime.datetime.fromisoformat(event.time)
    except ValueError:
        return None


def _read(confirm: asyncio.Future[Any]) -> None:
    if not confirm.cancelled():
        confirm.exception()


class RabbitSink:
    """Publishes events to one topic exchange."""

    def __init__(self, config: SinkConfig) -> None:
        self._tls = check_bus_url(
            config, ("amqp", "amqps"), "amqp://HOST:PORT/VHOST (amqps://... for TLS)"
        )
        url = URL(config.url)
        self._user = ""
        if config.credentials_file:
            self._user, password = user_password(config.credentials_file, f"sink {config.name}")
            url = url.with_user(self._user).with_password(password)
        self.name = config.name
        self._url = url
        self._where = f"RabbitMQ at {shown(config.url)}"
        self._exchange_name = config.target or DEFAULT_EXCHANGE
        self._timeout = config.timeout_s
        self._connection: AbstractConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._confirms: Mapping[int, object] = {}  # the channel's confirms awaited

    async def start(self) -> None:
        if self._connection is not None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                connection = await aio_pika.connect(
                    self._url,
                    timeout=self._timeout,
                    ssl_context=self._tls,
                    client_properties={"connection_name": f"outpost-hub sink {self.name}"},
                )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise self._refused(exc) from exc
        except aiormq.exceptions.AuthenticationError as exc:
            raise SinkError(
                f"{self._where}: no common login mechanism: {exc}", permanent=True
            ) from exc
        except aiormq.exceptions.ConnectionClosed as exc:
            if exc.args and exc.args[0] == NOT_ALLOWED:
                raise SinkError(
                    f"{self._where}: user {self._user!r} may not use this vhost: {describe(exc)}",
                    permanent=True,
                ) from exc
            raise SinkError(f"{self._where}: cannot connect: {describe(exc)}") from exc
        except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
            what = describe(exc)
            if isinstance(exc, TimeoutError):
                what = f"no connection within {self._timeout:g} s"
            raise SinkError(f"{self._where}: cannot connect: {what}") from exc
        self._connection = connection
        try:
            await self._open_channel(connection)
        except SinkError:
            await self.close()
            raise
        except (*CHANNEL_FAILURES, TimeoutError) as exc:
            await self.close()
            raise SinkError(
                f"{self._where}: exchange {self._exchange_name} not declared: {describe(exc)}"
            ) from exc
        logger.info(
            "sink %s: connected to %s, exchange %s", self.name, self._where, self._exchange_name
        )

    def _refused(self, exc: BaseException) -> SinkError:
        who = f"user {self._user!r}" if self._user else "no credentials (guest)"
        return SinkError(
            f"{self._where} refused the credentials ({who}): check credentials_file ({exc})",
            permanent=True,
        )

    async def _declare(
        self, connection: AbstractConnection
    ) -> tuple[AbstractChannel, AbstractExchange]:
        """A channel with publisher confirms and the durable topic exchange on it:
        declared if the user may, else taken as it exists (a user who may only write)."""
        channel: AbstractChannel = await connection.channel(publisher_confirms=True)
        try:
            exchange = await channel.declare_exchange(
                self._exchange_name,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
                timeout=self._timeout,
            )
            return channel, exchange
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise SinkError(
                f"{self._where}: exchange {self._exchange_name} exists but is not a durable "
                f"topic exchange: {describe(exc)}",
                permanent=True,
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused:
            pass  # no configure permission: the server closed that channel
        channel = await connection.channel(publisher_confirms=True)
        try:
            exchange = await channel.declare_exchange(
                self._exchange_name, passive=True, timeout=self._timeout
            )
            return channel, exchange
        except (
            aiormq.exceptions.ChannelAccessRefused,
            aiormq.exceptions.ChannelNotFoundEntity,
        ) as exc:
            raise SinkError(
                f"{self._where}: user {self._user!r} may not declare exchange "
                f"{self._exchange_name} (no configure permission), and it is missing or out "
                f"of the user's reach: {describe(exc)}",
                permanent=True,
            ) from exc

    async def publish(self, events: Sequence[Event]) -> None:
        assert self._exchange is not None, "start() first"
        for event in events:
            message = aio_pika.Message(
                event.body(),
                content_type=CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=event.id,
                type=event.type,
                timestamp=timestamp(event),
                app_id="outpost-hub",
            )
            try:
                async with asyncio.timeout(self._timeout):
                    await self._exchange.publish(message, event.topic(), mandatory=False)
            except aiormq.exceptions.DeliveryError as exc:
                raise SinkError(f"{self._where}: the broker nacked {event.id}") from exc
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                # The one precondition of basic.publish: the message's size against the
                # broker's max_message_size. Sent again it would close the channel again,
                # forever: refused for good, on a new channel for the events after it.
                await self._reopen(exc)
                raise EventRefusedError(
                    event, f"larger than the broker takes: {describe(exc)}"
                ) from exc
            except TimeoutError as exc:
                raise SinkError(
                    f"{self._where}: {event.id} not confirmed within {self._timeout:g} s"
                ) from exc
            except CHANNEL_FAILURES as exc:
                self._read_orphans()
                raise SinkError(f"{self._where}: {describe(exc)}") from exc
            except asyncio.CancelledError as exc:
                # aiormq fails what awaits a confirm with CancelledError when it closes a
                # connection for no stated reason; only a cancel of this task is one.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                self._read_orphans()
                raise SinkError(f"{self._where}: connection closed") from exc

    async def _open_channel(self, connection: AbstractConnection) -> None:
        """The channel publishes go on, and the exchange on it."""
        async with asyncio.timeout(self._timeout):  # opening a channel has no timeout
            channel, self._exchange = await self._declare(connection)
            underlay = await channel.get_underlay_channel()
        if isinstance(underlay, aiormq.Channel):
            self._confirms = underlay.confirmations

    async def _reopen(self, cause: BaseException) -> None:
        """A new channel on the same connection, after the broker closed the last one."""
        if self._connection is None:
            raise SinkError(f"{self._where}: {describe(cause)}") from cause
        try:
            await self._open_channel(self._connection)
        except (*CHANNEL_FAILURES, TimeoutError) as exc:
            raise SinkError(f"{self._where}: no channel after {describe(cause)}") from exc

    def _read_orphans(self) -> None:
        """Read the failure of every confirm the lost connection left. aiormq makes a
        publish's confirm before writing it; when the write fails with the connection,
        the confirm gets the same error with nobody to read it (aiormq issue 177), and
        asyncio would log each one as an error never retrieved."""
        for confirm in list(self._confirms.values()):
            if isinstance(confirm, asyncio.Future):
                confirm.add_done_callback(_read)

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        self._confirms = {}
        if connection is not None and not connection.is_closed:
            await connection.close()
