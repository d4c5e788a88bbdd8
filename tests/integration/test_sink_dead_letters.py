"""What a sink's receiver refusing costs (docs/sinks.md, "Webhooks"): a receiver that
turns the hub itself away (401, 403, 404, ...) fails the sink and keeps its events for
it, where one that refuses an event (422) dead-letters that event alone; and dead
letters are pruned by age and by count, on both back-ends (a real SQLite file, a real
PostgreSQL database), against a real HTTP receiver."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub.sinks import drain
from hub.sinks.drain import Bounds
from hub.store import HubStore, outbox
from hub.store.sql import Sql
from tests.databases import BACKENDS, database
from tests.integration import test_sink_bounds as bounds_test
from tests.support import eventually, free_port

NO_BOUNDS = Bounds(max_events=10**9, max_age_s=10**9)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    found = HubStore(database(request, tmp_path))
    found.publish_events()
    yield found
    found.close()


async def write(store: HubStore, count: int) -> list[int]:
    def change(db: Sql) -> None:
        with db.write():
            outbox.emit_many(
                db, [("device.online", f"dev-dead{n:04d}", {}, time.time()) for n in range(count)]
            )

    await store.run(change)
    return [e.id for e in await store.run(outbox.after, 0, 100_000)]


@dataclass
class Receiver:
    answer: int  # the status every POST gets
    url: str = ""
    posts: int = 0


@contextlib.asynccontextmanager
async def receiving(answer: int) -> AsyncIterator[Receiver]:
    found = Receiver(answer)

    async def handle(request: web.Request) -> web.Response:
        found.posts += 1
        return web.Response(status=found.answer)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    found.url = f"http://127.0.0.1:{port}/events"
    try:
        yield found
    finally:
        await runner.cleanup()


def draining(store: HubStore, tmp_path: Path, url: str) -> AbstractAsyncContextManager[None]:
    """The webhook sink's drain running from the outbox's start (test_sink_bounds.py's)."""
    return bounds_test.draining(store, bounds_test.webhook(tmp_path, url), NO_BOUNDS)


async def letters(store: HubStore, sink: str) -> list[Any]:
    return await store.run(lambda db: outbox.dead_letters(db, sink, before=None, limit=100))


async def cursor(store: HubStore) -> outbox.SinkCursor:
    (found,) = [c for c in await store.run(outbox.cursors) if c.sink == "hook"]
    return found


@pytest.mark.parametrize("answer", [401, 403, 404])
async def test_a_receiver_that_turns_the_hub_away_keeps_its_events_waiting(
    store: HubStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: int
) -> None:
    monkeypatch.setattr(drain, "FAILED_RETRY_S", 0.2)  # the slowest pace, made quick
    ids = await write(store, 5)
    async with receiving(answer) as receiver, draining(store, tmp_path, receiver.url):

        async def refused_twice() -> outbox.SinkCursor | None:
            found = await cursor(store)
            return found if receiver.posts >= 2 and found.state == "failed" else None

        failed = await eventually(refused_twice, timeout=30, what="the sink failed, tried again")
        assert failed is not None
        assert f"answered {answer}" in failed.error
        assert "turns the hub away" in failed.error
        assert (failed.position, failed.dead_lettered) == (0, 0)
        assert await letters(store, "hook") == []

        receiver.answer = 204  # its secret set right: every event goes, none was lost

        async def delivered() -> bool:
            found = await cursor(store)
            return found.position == ids[-1] and found.delivered == len(ids)

        await eventually(delivered, timeout=30, what="the waiting events delivered")
        assert (await cursor(store)).dead_lettered == 0


async def test_a_receiver_that_refuses_events_dead_letters_each_and_goes_on(
    store: HubStore, tmp_path: Path
) -> None:
    """The control: 422 is about the event, which alone is refused for good."""
    ids = await write(store, 3)
    async with receiving(422) as receiver, draining(store, tmp_path, receiver.url):

        async def gone_on() -> bool:
            found = await cursor(store)
            return found.position == ids[-1]

        await eventually(gone_on, timeout=30, what="every event dead-lettered")
    assert (await cursor(store)).dead_lettered == 3


async def test_dead_letters_are_pruned_by_age_and_by_count(store: HubStore) -> None:
    ids = await write(store, 12)
    rows = {e.id: e for e in await store.run(outbox.after, 0, 100)}
    now = time.time()
    for n, event_id in enumerate(ids):
        sink = "old" if n < 4 else "busy"
        at = now - 7200 if n < 2 else now  # two of "old" refused two hours ago
        await store.run(outbox.open_cursor, sink, now)
        await store.run(
            lambda db, s=sink, e=event_id, a=at: outbox.dead_letter(
                db, s, f"evt-{e}", rows[e], "{}", "422", a, frm=e - 1
            )
        )

    assert await store.run(outbox.prune_dead_letters, 86_400.0, 100, now) == 0
    # Kept an hour, the newest 5 of each sink: "old" loses its two old ones, "busy" 3.
    assert await store.run(outbox.prune_dead_letters, 3600.0, 5, now) == 5
    old = await letters(store, "old")
    busy = await letters(store, "busy")
    assert [r["event_id"] for r in old] == [f"evt-{i}" for i in reversed(ids[2:4])]
    assert [r["event_id"] for r in busy] == [f"evt-{i}" for i in reversed(ids[7:])]


async def test_a_dead_letter_does_not_undo_a_replay(store: HubStore) -> None:
    """The drain refused event 5 while an operator's replay moved the cursor back to 0:
    the letter is kept, and the cursor stays where the replay put it."""
    ids = await write(store, 6)
    row = next(e for e in await store.run(outbox.after, 0, 100) if e.id == ids[4])
    await store.run(outbox.open_cursor, "hook", time.time())

    def place(db: Sql, position: int) -> None:
        with db.write():
            db.execute("UPDATE sink_cursors SET position = ? WHERE sink = 'hook'", (position,))

    def refuse(db: Sql) -> bool:
        return outbox.dead_letter(
            db, "hook", f"evt-{row.id}", row, "{}", "422", time.time(), frm=row.id - 1
        )

    await store.run(place, 0)  # the replay, after the drain read its chunk
    assert await store.run(refuse) is False
    found = await cursor(store)
    assert (found.position, found.dead_lettered) == (0, 1)
    assert len(await letters(store, "hook")) == 1
    # The control: with the cursor where the drain left it, it moves past the event.
    await store.run(place, row.id - 1)
    assert await store.run(refuse) is True
    assert (await cursor(store)).position == row.id
