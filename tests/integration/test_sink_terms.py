"""A sink's drain runs again on each leadership term (hub/leadership.py reruns
SinkService.run with the same drains): the state it shows is this term's, not one another
replica wrote while it led. Against a real receiver, on both back-ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink
from hub.store import HubStore, outbox
from tests.databases import BACKENDS, database
from tests.integration.test_sink_bounds import webhook
from tests.integration.test_sink_dead_letters import cursor, receiving
from tests.integration.test_sink_selector import leading
from tests.support import eventually


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    found = HubStore(database(request, tmp_path))
    found.publish_events()
    yield found
    found.close()


async def test_a_new_term_overwrites_the_state_another_replica_left(
    store: HubStore, tmp_path: Path
) -> None:
    await store.run(outbox.open_cursor, "hook", time.time())
    async with receiving(204) as receiver:
        drain = Drain(
            webhook(tmp_path, receiver.url),
            store,
            make_sink,
            source="https://hub.test",
            bounds=Bounds(10**9, 1e9),
        )

        async def idle() -> bool:
            return (await cursor(store)).state == "idle"

        async with leading(drain):  # this replica's first term: nothing to send
            await eventually(idle, timeout=30, what="the sink idle")
        # Another replica leads meanwhile, and its bus connection fails.
        await store.run(
            lambda db: outbox.set_state(
                db, "hook", "failing", "POST ... failed", time.time(), retried=1
            )
        )
        async with leading(drain):  # this replica leads again; the receiver is healthy
            await eventually(idle, timeout=30, what="this term's state shown")
    found = await cursor(store)
    assert (found.state, found.error) == ("idle", "")
