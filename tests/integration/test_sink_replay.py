"""A replay only ever sends a sink events again: from a time after the events it has yet
to get (a time in the future, a typo), it moved the sink's cursor past them, and they
were never delivered, nor counted as skipped. Both back-ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.store import HubStore, outbox
from hub.store.sql import Sql
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    opened.publish_events()
    yield opened
    opened.close()


def _emit(db: Sql, count: int, at: float) -> None:
    outbox.emit_many(db, [("device.online", f"dev-{n}", {}, at + n) for n in range(count)])


async def test_a_replay_from_later_than_what_waits_skips_nothing(store: HubStore) -> None:
    now = time.time()
    await store.run(_emit, 3, now - 100)  # delivered before the sink's cursor opened
    opened = await store.run(outbox.open_cursor, "hook", now)
    await store.run(_emit, 5, now - 50)  # waiting for the sink

    ahead = await store.run(outbox.rewind, "hook", now + 3600, now)
    assert ahead == opened.position  # not moved past the five waiting
    assert await store.run(outbox.position_of, "hook") == opened.position

    # The control: a replay from before them all sends every kept event again.
    back = await store.run(outbox.rewind, "hook", now - 1000, now)
    assert back is not None
    assert back < opened.position
    assert len(await store.run(outbox.after, back, 100)) == 8
    assert await store.run(outbox.rewind, "nope", now, now) is None
