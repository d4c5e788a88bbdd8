"""Event ids stay unique when the hub's database is restored from an older backup (a
real SQLite file, copied as a backup is, and a real HTTP receiver): the restored outbox
numbers new events as ones it had already sent, and a consumer that drops ids it has
seen must not drop them; an event sent again keeps its id."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink
from hub.store import HubStore, outbox
from hub.store.sql import Sql
from tests.support import eventually, free_port

FAR = 10**9


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, list[str]]]:
    """A webhook receiver: its URL, and the ids of what it accepted, in order."""
    ids: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        ids.append(request.headers["ce-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/events", ids
    finally:
        await runner.cleanup()


async def write(store: HubStore, count: int, at: float) -> None:
    def change(db: Sql) -> None:
        with db.write():
            outbox.emit_many(
                db, [("device.online", f"dev-id{n:04d}", {}, at) for n in range(count)]
            )

    await store.run(change)


async def deliver_all(store: HubStore, config: SinkConfig, ids: list[str], total: int) -> None:
    """Run the drain until the receiver has `total` events."""
    await store.run(outbox.open_cursor, config.name, time.time())
    bounds = Bounds(max_events=FAR, max_age_s=FAR)
    task = asyncio.create_task(
        Drain(config, store, make_sink, source="https://hub.test", bounds=bounds).run()
    )

    async def done() -> bool:
        return len(ids) >= total

    try:
        await eventually(done, timeout=30, what=f"{total} events delivered")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_events_after_a_restore_from_an_older_backup_get_new_ids(tmp_path: Path) -> None:
    database, backup = tmp_path / "hub.db", tmp_path / "backup" / "hub.db"
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret-for-the-ids-test")
    async with receiving() as (url, ids):
        config = SinkConfig(name="hook", kind="webhook", url=url, credentials_file=str(secret))
        store = HubStore(database)
        store.publish_events()
        await store.run(outbox.open_cursor, "hook", time.time())
        await write(store, 3, at=1_800_000_000.0)
        store.close()
        backup.parent.mkdir()
        shutil.copy(database, backup)  # the hub stopped, its file copied: a backup

        store = HubStore(database)
        store.publish_events()
        await write(store, 2, at=1_800_000_100.0)  # after the backup: numbered 4 and 5
        await deliver_all(store, config, ids, 5)
        store.close()
        before = list(ids)

        shutil.copy(backup, database)  # restored: the outbox numbers 4 and 5 again
        store = HubStore(database)
        store.publish_events()
        await write(store, 2, at=1_800_000_200.0)
        await deliver_all(store, config, ids, 10)  # the backup's cursor: 1-3 sent again
        store.close()
    after = ids[5:]

    assert [i.split("-")[1] for i in after] == ["1", "2", "3", "4", "5"]
    assert after[:3] == before[:3]  # sent again: the same ids, which a consumer drops
    assert not set(after[3:]) & set(before)  # new events: ids never seen before
