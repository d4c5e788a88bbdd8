"""A sink's outbox bounds (docs/sinks.md, "Bounded"): a sink that falls past
`sink_max_lag_events` or `sink_max_lag_s` has its oldest events skipped, counted as
overflowed, logged as an error and shown as `overflowed`, whatever its state: down at
start (unreachable, refused credentials, a configuration it cannot be made with) or
failing while publishing. And delivered events are pruned after `sink_keep_s`.

Each drain runs against a real counterpart: a port nobody listens on, a real nats-server
that refuses the password, a real HTTP receiver that answers 503 or holds requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink, statuses
from hub.store import HubStore, outbox
from hub.store.outbox import SinkCursor
from hub.store.sql import Sql
from tests.buses import ThrowawayNats
from tests.support import eventually, free_port

EVENTS = 50
FAR = 10**9  # a bound that is never reached


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HubStore]:
    found = HubStore(tmp_path / "hub.db")
    found.publish_events()
    yield found
    found.close()


async def write(store: HubStore, count: int, *, age_s: float = 0.0) -> list[int]:
    """`count` events written `age_s` ago; the outbox's ids after."""
    at = time.time() - age_s

    def change(db: Sql) -> None:
        with db.write():
            outbox.emit_many(
                db, [("device.online", f"dev-bound{n:04d}", {}, at) for n in range(count)]
            )

    await store.run(change)
    return [e.id for e in await store.run(outbox.after, 0, 100_000)]


async def cursor_of(store: HubStore, name: str) -> SinkCursor:
    (found,) = [c for c in await store.run(outbox.cursors) if c.sink == name]
    return found


@contextlib.asynccontextmanager
async def draining(store: HubStore, config: SinkConfig, bounds: Bounds) -> AsyncIterator[None]:
    """The sink's drain running, from the outbox's start (as a sink that fell behind)."""
    await store.run(outbox.open_cursor, config.name, time.time())

    def to_start(db: Sql) -> None:
        with db.write():
            db.execute("UPDATE sink_cursors SET position = 0 WHERE sink = ?", (config.name,))

    await store.run(to_start)
    task = asyncio.create_task(
        Drain(config, store, make_sink, source="https://hub.test", bounds=bounds).run()
    )
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def receiver(status: int | None) -> AsyncIterator[str]:
    """An HTTP receiver answering `status`, or holding every request (None); its URL."""
    held = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if status is None:
            await held.wait()  # a receiver that never answers
        return web.Response(status=status or 200)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/events"
    finally:
        held.set()
        await runner.cleanup()


def webhook(tmp_path: Path, url: str, *, timeout_s: float = 10.0) -> SinkConfig:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret-for-the-bounds-test")
    return SinkConfig(
        name="hook", kind="webhook", url=url, credentials_file=str(secret), timeout_s=timeout_s
    )


@contextlib.asynccontextmanager
async def sink_that_cannot_start(case: str, tmp_path: Path) -> AsyncIterator[SinkConfig]:
    """A sink configuration that never gets past start(), for the reason `case` names."""
    if case == "nats-unreachable":
        yield SinkConfig(name="bus", kind="nats", url=f"nats://127.0.0.1:{free_port()}")
    elif case == "rabbitmq-unreachable":
        yield SinkConfig(name="bus", kind="rabbitmq", url=f"amqp://127.0.0.1:{free_port()}/%2f")
    elif case == "nats-refused-credentials":
        with ThrowawayNats(user="hub", password="right-password") as server:
            creds = tmp_path / "wrong.creds"
            creds.write_text("hub:wrong-password\n")
            yield SinkConfig(name="bus", kind="nats", url=server.url, credentials_file=str(creds))
    elif case == "webhook-bad-configuration":  # plain http to another machine: ValueError
        yield webhook(tmp_path, "http://192.0.2.1/events")
    else:
        raise AssertionError(case)


CANNOT_START = [
    "nats-unreachable",
    "rabbitmq-unreachable",
    "nats-refused-credentials",
    "webhook-bad-configuration",
]


@pytest.mark.parametrize("case", CANNOT_START)
async def test_a_sink_that_cannot_start_still_overflows_past_its_event_bound(
    case: str, store: HubStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await write(store, EVENTS)
    async with (
        sink_that_cannot_start(case, tmp_path) as config,
        draining(store, config, Bounds(max_events=10, max_age_s=FAR)),
    ):

        async def skipped() -> bool:
            return (await cursor_of(store, config.name)).overflowed > 0

        await eventually(skipped, timeout=30, what="the oldest events skipped")
    cursor = await cursor_of(store, config.name)
    assert cursor.position == ids[-1] - 10
    assert cursor.overflowed == EVENTS - 10
    assert cursor.delivered == 0
    assert any(
        r.levelno == logging.ERROR and "overflowed" in r.getMessage() for r in caplog.records
    ), "an overflow is logged as an error"


@pytest.mark.parametrize("case", ["nats-unreachable", "webhook-bad-configuration"])
async def test_a_sink_that_cannot_start_still_overflows_past_its_age_bound(
    case: str, store: HubStore, tmp_path: Path
) -> None:
    old = await write(store, 30, age_s=3600)
    await write(store, 20)
    async with (
        sink_that_cannot_start(case, tmp_path) as config,
        draining(store, config, Bounds(max_events=FAR, max_age_s=600)),
    ):

        async def skipped() -> bool:
            return (await cursor_of(store, config.name)).overflowed > 0

        await eventually(skipped, timeout=30, what="the old events skipped")
    cursor = await cursor_of(store, config.name)
    assert cursor.position == old[-1], "exactly the events past the age bound are skipped"
    assert cursor.overflowed == 30


async def test_a_sink_failing_while_publishing_overflows_by_count_and_by_age(
    store: HubStore, tmp_path: Path
) -> None:
    old = await write(store, 30, age_s=3600)
    ids = await write(store, 20)
    async with (
        receiver(503) as url,
        draining(store, webhook(tmp_path, url), Bounds(max_events=15, max_age_s=600)),
    ):

        async def skipped_and_retried() -> bool:
            found = await cursor_of(store, "hook")
            return found.overflowed > 0 and found.retried > 0

        await eventually(skipped_and_retried, timeout=30, what="skips, then retries")
    cursor = await cursor_of(store, "hook")
    assert old[-1] < ids[-1] - 15  # the count bound is the tighter here
    assert cursor.position == ids[-1] - 15
    assert cursor.overflowed == 35
    assert cursor.delivered == 0
    assert cursor.state == "failing", "the state says why it delivers nothing"
    assert "503" in cursor.error


async def test_an_overflowed_sink_shows_overflowed_with_its_count_and_lag(
    store: HubStore, tmp_path: Path
) -> None:
    """While the sink is stuck (a receiver that holds every request), the state the API
    and /metrics show is `overflowed`, with the skipped count and what is left."""
    ids = await write(store, EVENTS)
    async with receiver(None) as url:
        config = webhook(tmp_path, url, timeout_s=300)
        async with draining(store, config, Bounds(max_events=10, max_age_s=FAR)):

            async def shown() -> bool:
                return (await statuses(store, [config]))[0].state == "overflowed"

            await eventually(shown, timeout=30, what="the overflowed state")
            (status,) = await statuses(store, [config])  # held: it stays overflowed
    assert status.overflowed == EVENTS - 10
    assert status.lag_events == 10
    assert status.position == ids[-1] - 10


async def test_prune_keeps_what_a_sink_lacks_and_what_is_younger_than_keep(
    store: HubStore,
) -> None:
    old = await write(store, 30, age_s=7200)
    young = (await write(store, 20))[30:]
    now = time.time()
    for name, position in (("fast", young[-1]), ("slow", old[9])):
        await store.run(outbox.open_cursor, name, now)

        def place(db: Sql, name: str = name, position: int = position) -> None:
            with db.write():
                db.execute("UPDATE sink_cursors SET position = ? WHERE sink = ?", (position, name))

        await store.run(place)

    async def left() -> list[int]:
        return [e.id for e in await store.run(outbox.after, 0, 100_000)]

    # Kept a day: nothing is old enough yet.
    assert await store.run(outbox.prune, ["fast", "slow"], 86_400.0, now) == 0
    # Kept an hour: the old events the slowest sink has, not those it still lacks.
    assert await store.run(outbox.prune, ["fast", "slow"], 3600.0, now) == 10
    assert await left() == old[10:] + young
    # A sink no longer configured holds nothing back.
    assert await store.run(outbox.prune, ["fast"], 3600.0, now) == 20
    assert await left() == young
    # Young events stay even when every sink has them; with no sink, old ones go.
    assert await store.run(outbox.prune, ["fast"], 60.0, now) == 0
    assert await store.run(outbox.prune, [], 60.0, now + 3600) == 20
    assert await left() == []
