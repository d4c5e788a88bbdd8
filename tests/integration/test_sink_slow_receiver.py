"""Ingest beside a webhook sink whose receiver is stalled (never answers) or slow (10 ms
an event), as in the hub: the drain on the same event loop and store as ingest. Ingest
completes and stores every record with its event; the receiver, once it answers, gets
every event in order. How fast ingest goes meanwhile is measured by
tests/bench/bench_sinks.py, not asserted here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink
from hub.store import Device, HubStore, Upload, outbox
from tests.bench.common import RESULT
from tests.integration.test_sink_webhook import SECRET, Receiver
from tests.support import eventually, free_port

BATCHES = 20
PER_BATCH = 50
SLOW_S = 0.01  # the slow receiver's time an event


@pytest.mark.timeout(240)
@pytest.mark.parametrize("pace", ["stalled", "slow"])
async def test_ingest_beside_a_stalled_or_slow_webhook_completes_and_loses_nothing(
    pace: str, tmp_path: Path
) -> None:
    store = HubStore(tmp_path / "hub.db")
    store.publish_events()
    found = Receiver(free_port())
    if pace == "stalled":
        found.hold = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        if pace == "slow":
            await asyncio.sleep(SLOW_S)  # the receiver's own pace, not a synchronisation
        return await found.handle(request)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    secret = tmp_path / "hook.secret"
    secret.write_text(SECRET)
    config = SinkConfig(
        name="hook",
        kind="webhook",
        url=f"http://127.0.0.1:{found.port}/events",
        credentials_file=str(secret),
        timeout_s=300,
    )
    await store.run(outbox.open_cursor, "hook", time.time())
    drain = Drain(config, store, make_sink, source="https://hub.test", bounds=Bounds(10**9, 1e9))
    task = asyncio.create_task(drain.run())
    try:
        await store.add_device(
            Device(
                "dev-slowhook0001", "generic", {}, False, None, None, None, None, {}, {},
                time.time(), None, None, None,
            )
        )  # fmt: skip

        async def under_way() -> bool:
            return found.held > 0 if pace == "stalled" else len(found.accepted) > 0

        await eventually(under_way, timeout=30, what="the drain at the receiver")
        body = msgspec.msgpack.encode(RESULT)
        for b in range(BATCHES):
            first = b * PER_BATCH + 1
            rows = [(first + i, time.time(), body) for i in range(PER_BATCH)]
            await store.apply_uploads(
                [Upload("dev-slowhook0001", "results", first, first + PER_BATCH - 1, rows)],
                now=time.time(),
            )
            drain.wake()
        stored = await store.run(
            lambda db: db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        )
        assert stored == BATCHES * PER_BATCH
        written = [e.id for e in await store.run(outbox.after, 0, 100_000)]
        assert len(written) == 1 + BATCHES * PER_BATCH  # enrolled, then each record
        if found.hold is not None:
            assert found.accepted == [], "a stalled receiver took nothing meanwhile"
            found.hold.set()

        async def delivered() -> bool:
            return found.ids() == written

        await eventually(delivered, timeout=180, every=0.2, what="every event delivered")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if found.hold is not None:
            found.hold.set()
        await runner.cleanup()
        store.close()
