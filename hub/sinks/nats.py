"""NATS JetStream sink: each event published to `outpost.<area>.<what>.<device>` into a
stream the hub makes if it is missing, each one acknowledged by JetStream.

Every message carries `Nats-Msg-Id: <event id>`: JetStream drops a message whose id it
stored within the stream's duplicate window, so events published again after a crash
(the cursor had not moved) are stored once. `Nats-Expected-Stream` makes a stream other
than the sink's refuse them rather than take them quietly.

Order. Acks are awaited in publish order, and publishes are pipelined (up to `WINDOW`
sent before the first ack is awaited: ~20k events/s on a 2-core machine, against ~4k
one at a time) only where that keeps order: on a single-replica stream that discards
old messages at its limits, the server takes one connection's messages in the order
they came, and what makes it refuse one (the stream gone, its storage failing,
JetStream off, the connection lost) refuses the rest after it too. Where a refusal can
come and go between two messages (a stream that discards new messages at its limits; a
replicated one, whose leader can change mid-batch), a later message could be stored
ahead of an earlier one sent again: there the sink publishes one at a time. A message
larger than the stream allows is refused alone and for good: it goes to the dead
letters, and order is kept around it.

Connection. nats-py's own reconnection is off: a lost connection fails the publish at
once, and the drain makes a new sink with its own back-off. Credentials come from
`credentials_file` (USER:PASSWORD), never from the URL in hub.toml.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, Header, StorageType, StreamConfig, StreamInfo

from hub.sinks.base import CONTENT_TYPE, Event, EventRefusedError, SinkError
from hub.sinks.config import SinkConfig, check_bus_url, shown, user_password

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "OUTPOST"
SUBJECTS = "outpost.>"
# Publishes awaiting their ack at once, when pipelined: past ~100 the rate no longer
# grows (loopback, 2 cores), and a failure sends at most this many again.
WINDOW = 128
# How long JetStream remembers an id to drop a duplicate: a hub restart, a replica's
# takeover and the drain's capped back-off (60 s) all fit in it. Past it, a consumer
# still dedupes by id.
DUPLICATE_WINDOW_S = 600.0
# A stream the hub makes keeps a week of events, old ones dropped first: bounded on the
# bus's disk. An operator who wants otherwise makes the stream first; the sink takes an
# existing stream as it is.
MAX_AGE_S = 7 * 86400.0
MESSAGE_TOO_LARGE = 10054  # JSStreamMessageExceedsMaximumErr: past the stream's max_msg_size
NO_RESPONDERS = "503"  # the status of the reply when no stream takes the subject
NAME_FORBIDDEN = frozenset(" \t\r\n.*>/\\")


def pipelines(stream: StreamInfo) -> bool:
    """Whether publishes to this stream may be pipelined and keep their order."""
    config = stream.config
    return config.discard != DiscardPolicy.NEW and (config.num_replicas or 1) <= 1


class AckInbox:
    """JetStream publish acks, matched to their publishes by reply subject.

    nats-py's `publish_async` does the same, but leaves an ack that reports an error
    pending forever (nats-py issue 985: the error is raised inside its reply handler
    instead of set on the future), so a refusal would only ever time out. This uses the
    client's public core API. Acks still awaited fail at once when the connection closes.
    """

    def __init__(self) -> None:
        self._prefix = ""
        self._sent = 0
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def open(self, client: Client) -> None:
        self._prefix = client.new_inbox()
        await client.subscribe(f"{self._prefix}.*", cb=self._on_reply)

    async def send(
        self, client: Client, subject: str, body: bytes, headers: dict[str, str]
    ) -> asyncio.Future[Msg]:
        """Publish; the future of its ack (the reply message)."""
        self._sent += 1
        reply = f"{self._prefix}.{self._sent}"
        ack: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        ack.add_done_callback(lambda _: self._waiting.pop(reply, None))
        self._waiting[reply] = ack
        try:
            await client.publish(subject, body, reply=reply, headers=headers)
        except BaseException:
            ack.cancel()
            raise
        return ack

    async def _on_reply(self, msg: Msg) -> None:
        ack = self._waiting.get(msg.subject)
        if ack is not None and not ack.done():
            ack.set_result(msg)

    def fail_all(self, exc: Exception) -> None:
        for ack in list(self._waiting.values()):
            if not ack.done():
                ack.set_exception(exc)


class NatsSink:
    """Publishes events into one JetStream stream."""

    def __init__(self, config: SinkConfig) -> None:
        self._tls = check_bus_url(
            config, ("nats", "tls"), "nats://HOST:PORT (tls://HOST:PORT for TLS)"
        )
        stream = config.target or DEFAULT_STREAM
        if NAME_FORBIDDEN.intersection(stream):
            raise ValueError(
                f"sink {config.name}: target {stream!r} is not a JetStream stream name "
                "(no spaces, '.', '*', '>', '/' or '\\')"
            )
        self.name = config.name
        self._url = config.url
        self._where = f"NATS at {shown(config.url)}"
        self._stream = stream
        self._timeout = config.timeout_s
        self._user, self._password = "", ""
        if config.credentials_file:
            self._user, self._password = user_password(
                config.credentials_file, f"sink {config.name}"
            )
        self._client: Client | None = None
        self._acks = AckInbox()
        self._window = 1
        # What the server reported outside any request (a permissions violation): the
        # request itself only times out.
        self._reported: list[Exception] = []

    async def start(self) -> None:
        if self._client is not None:
            return
        client = Client()
        try:
            async with asyncio.timeout(self._timeout):
                await client.connect(
                    servers=[self._url],
                    name=f"outpost-hub sink {self.name}",
                    user=self._user or None,
                    password=self._password or None,
                    tls=self._tls,
                    connect_timeout=max(1, int(self._timeout)),
                    # The drain retries with its own back-off. nats-py tries a server
                    # once more however it is set (and forever with 0 attempts): let it
                    # be at once, and only once.
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=self._on_error,
                    closed_cb=self._on_closed,
                )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            await _close(client, self._timeout)
            raise self._connect_error(exc) from exc
        self._client = client
        try:
            stream = await self._ensure_stream(client.jetstream(timeout=self._timeout))
            await self._acks.open(client)
        except SinkError:
            await self.close()
            raise
        except (nats.errors.Error, OSError) as exc:
            await self.close()
            raise SinkError(f"{self._where}: {str(exc) or type(exc).__name__}") from exc
        self._window = WINDOW if pipelines(stream) else 1
        logger.info(
            "sink %s: connected to %s, stream %s (%s)",
            self.name,
            self._where,
            self._stream,
            "pipelined" if self._window > 1 else "one publish at a time",
        )

    async def _on_error(self, exc: Exception) -> None:
        self._reported.append(exc)
        del self._reported[:-10]

    async def _on_closed(self) -> None:
        self._acks.fail_all(nats.errors.ConnectionClosedError())

    def _connect_error(self, exc: BaseException) -> SinkError:
        # nats-py reports a refused login as a plain Error carrying the server's text.
        texts = [str(exc), *(str(e) for e in self._reported)]
        if isinstance(exc, nats.errors.AuthorizationError) or any(
            "authorization violation" in t.lower() or "authentication" in t.lower() for t in texts
        ):
            who = f"user {self._user!r}" if self._user else "no credentials"
            return SinkError(
                f"{self._where} refused the credentials ({who}): check credentials_file",
                permanent=True,
            )
        if isinstance(exc, TimeoutError):
            return SinkError(f"{self._where}: no connection within {self._timeout:g} s")
        # The pool gives up with NoServersError; the reason is what error_cb saw.
        reason = str(self._reported[-1]) if self._reported else str(exc)
        return SinkError(f"{self._where}: cannot connect: {reason or type(exc).__name__}")

    async def _ensure_stream(self, js: JetStreamContext) -> StreamInfo:
        """The sink's stream, made if missing."""
        try:
            try:
                return await js.stream_info(self._stream)
            except nats.js.errors.NotFoundError:
                pass
            created = await js.add_stream(
                StreamConfig(
                    name=self._stream,
                    description="Outpost hub events (CloudEvents JSON), made by the hub",
                    subjects=[SUBJECTS],
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.OLD,
                    max_age=MAX_AGE_S,
                    duplicate_window=DUPLICATE_WINDOW_S,
                )
            )
            logger.info("sink %s: made JetStream stream %s", self.name, self._stream)
            return created
        except nats.js.errors.ServiceUnavailableError as exc:
            raise SinkError(
                f"{self._where}: JetStream is not available: {exc.description or 'no answer'}"
            ) from exc
        except nats.js.errors.APIError as exc:
            raise SinkError(
                f"{self._where}: cannot make stream {self._stream}: {exc.description}",
                permanent=exc.code in (400, 403),
            ) from exc
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            denied = self._denied()
            if denied:
                raise SinkError(
                    f"{self._where}: may not read or make stream {self._stream}: {denied}",
                    permanent=True,
                ) from exc
            raise SinkError(
                f"{self._where}: stream {self._stream} not answered: {exc or 'timeout'}"
            ) from exc

    def _denied(self) -> str:
        for exc in reversed(self._reported):
            if "permissions violation" in str(exc).lower():
                return str(exc)
        return ""

    async def publish(self, events: Sequence[Event]) -> None:
        client = self._client
        assert client is not None, "start() first"
        pending: collections.deque[tuple[Event, asyncio.Future[Msg]]] = collections.deque()
        try:
            for event in events:
                if len(pending) >= self._window:
                    await self._acked(*pending.popleft())
                headers = {
                    "Nats-Msg-Id": event.id,
                    "Nats-Expected-Stream": self._stream,
                    "Content-Type": CONTENT_TYPE,
                }
                try:
                    ack = await self._acks.send(client, event.topic(), event.body(), headers)
                except nats.errors.MaxPayloadError as exc:
                    while pending:  # those before it are delivered when it is refused
                        await self._acked(*pending.popleft())
                    raise EventRefusedError(event, f"larger than the server takes: {exc}") from exc
                except (nats.errors.Error, OSError) as exc:
                    raise SinkError(f"{self._where}: {str(exc) or type(exc).__name__}") from exc
                pending.append((event, ack))
            while pending:
                await self._acked(*pending.popleft())
        finally:
            for _, ack in pending:  # after a failure: nobody will await them
                if not ack.cancel() and not ack.cancelled():
                    ack.exception()  # it failed with the connection: seen, not lost

    async def _acked(self, event: Event, ack: asyncio.Future[Msg]) -> None:
        """Wait (timeout_s at most) for the ack of `event`; raise what it reports."""
        try:
            if ack.done():  # pipelined: most acks are in before they are awaited
                reply = ack.result()
            else:
                async with asyncio.timeout(self._timeout):
                    reply = await ack
        except TimeoutError as exc:
            denied = self._denied()
            if denied:
                raise SinkError(
                    f"{self._where}: may not publish: {denied}", permanent=True
                ) from exc
            raise SinkError(
                f"{self._where}: {event.id} not acknowledged within {self._timeout:g} s"
            ) from exc
        except nats.errors.Error as exc:  # the connection closed meanwhile
            raise SinkError(f"{self._where}: {exc} before {event.id} was acknowledged") from exc
        if reply.headers and reply.headers.get(Header.STATUS) == NO_RESPONDERS:
            raise SinkError(
                f"{self._where}: no stream took {event.topic()} (stream {self._stream} "
                "deleted, or JetStream down)"
            )
        if b'"error"' not in reply.data and reply.data.startswith(b"{"):
            return  # {"stream":...,"seq":...}: stored (or a duplicate dropped)
        try:
            answer = json.loads(reply.data)
        except ValueError as exc:
            raise SinkError(f"{self._where}: unreadable ack for {event.id}") from exc
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            return
        description = str(error.get("description", error))
        if error.get("err_code") == MESSAGE_TOO_LARGE:
            raise EventRefusedError(event, f"stream {self._stream}: {description}")
        raise SinkError(f"{self._where}: stream {self._stream} refused {event.id}: {description}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close(client, self._timeout)


async def _close(client: Client, within: float) -> None:
    """Close, for at most `within` seconds: after a TLS handshake that failed (a server
    whose certificate is not trusted, a TLS-only server spoken to in plain), nats-py's
    close waits for ever on its own tasks."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await client.close()
