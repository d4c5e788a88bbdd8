"""The sinks' upkeep keeps its two chores apart: when the sinks' states cannot be read
(for /metrics), delivered events are still pruned from the outbox, so it stays bounded.
Against a real receiver and a real SQLite store; the states' failure is injected."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from hub.sinks import service
from hub.sinks.drain import Bounds
from hub.sinks.service import SinkService, SinkStatus
from hub.store import HubStore, outbox
from tests.integration.test_sink_bounds import webhook
from tests.integration.test_sink_dead_letters import receiving, write
from tests.support import eventually


async def test_delivered_events_are_pruned_while_the_states_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreadable(*_: object) -> list[SinkStatus]:
        raise RuntimeError("the states cannot be read")

    monkeypatch.setattr(service, "statuses", unreadable)
    monkeypatch.setattr(service, "PRUNE_EVERY_S", 0.0)
    monkeypatch.setattr(service, "STATUS_EVERY_S", 0.05)
    store = HubStore(tmp_path / "hub.db")
    store.publish_events()
    try:
        async with receiving(204) as receiver:
            config = webhook(tmp_path, receiver.url)
            await store.run(outbox.open_cursor, config.name, time.time())
            ids = await write(store, 5)
            sinks = SinkService(
                [config], store, source="https://hub.test", keep_s=0.0, bounds=Bounds(10**9, 1e9)
            )
            task = asyncio.create_task(sinks.run())
            try:

                async def pruned() -> bool:
                    return await store.run(outbox.after, 0, 10) == []

                await eventually(pruned, timeout=30, what="the delivered events pruned")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        assert receiver.posts == len(ids)
    finally:
        store.close()
