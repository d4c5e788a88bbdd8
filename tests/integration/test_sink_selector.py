"""A sink's selector judges each device event by the device's labels as they were when it
happened (docs/sinks.md, "Configuration"): a device relabelled into the selection has
its relabelling and what follows delivered, one relabelled out has its relabelling
delivered (the sink learns it left) and nothing after it; relabellings that a drain
finds together in its backlog are each honoured in turn. Against a real receiver and a
real SQLite store, the drain run as the leader runs it (again on each term)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub.sinks import selection
from hub.sinks.config import SinkConfig
from hub.sinks.drain import Bounds, Drain
from hub.sinks.service import make_sink
from hub.store import Device, HubStore, outbox
from hub.store.sql import Sql
from tests.support import eventually, free_port

NORTH = {"site": "north"}
SOUTH = {"site": "south"}


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver: its URL, and the events it took, in order."""
    got: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/events", got
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def leading(drain: Drain) -> AsyncIterator[None]:
    """One leadership term: the drain runs until the block ends."""
    task = asyncio.create_task(drain.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def device(device_id: str, labels: dict[str, str]) -> Device:
    return Device(
        device_id, "generic", labels, False, None, None, None, None, {}, {}, time.time(),
        None, None, None,
    )  # fmt: skip


async def online(store: HubStore, device_id: str, detail: str) -> None:
    def change(db: Sql) -> None:
        with db.write():
            outbox.emit(db, "device.online", device_id, {"detail": detail}, time.time())

    await store.run(change)


async def relabel(store: HubStore, device_id: str, labels: dict[str, str]) -> None:
    await store.update_device(device_id, labels=dict(labels), now=time.time())


async def caught_up(store: HubStore) -> None:
    head, _ = await store.run(outbox.head)

    async def there() -> bool:
        return await store.run(outbox.position_of, "north") == head

    await eventually(there, timeout=30, what="the sink's cursor at the outbox's head")


def seen(got: list[dict[str, Any]], device_id: str) -> list[str]:
    """What the receiver took of one device: relabelled, or online's detail."""
    out = []
    for event in got:
        if event.get("subject") == device_id:
            what = event["type"].removeprefix("org.outpost.device.")
            out.append(event["data"]["detail"] if what == "online" else what)
    return out


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HubStore]:
    found = HubStore(tmp_path / "hub.db")
    found.publish_events()
    await found.run(outbox.open_cursor, "north", time.time())
    yield found
    found.close()


def north_sink(tmp_path: Path, url: str) -> SinkConfig:
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cret")
    return SinkConfig(
        name="north", kind="webhook", url=url, credentials_file=str(secret), selector=NORTH
    )


async def test_a_device_moved_in_and_out_of_the_selection(
    store: HubStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Labels read again only when they must be: the outcome depends on no clock.
    monkeypatch.setattr(selection, "LABELS_FRESH_S", 3600.0)
    await store.add_device(device("dev-north0001", NORTH))
    await store.add_device(device("dev-mover00001", SOUTH))
    async with receiving() as (url, got):
        drain = Drain(
            north_sink(tmp_path, url),
            store,
            make_sink,
            source="https://hub.test",
            bounds=Bounds(10**9, 1e9),
        )
        async with leading(drain):
            await caught_up(store)  # the enrollments judged: the labels are read
            await online(store, "dev-mover00001", "while south")
            await relabel(store, "dev-mover00001", NORTH)
            await online(store, "dev-mover00001", "once north")
            await caught_up(store)
            await relabel(store, "dev-mover00001", SOUTH)
            await online(store, "dev-mover00001", "south again")
            await caught_up(store)
    assert seen(got, "dev-mover00001") == ["relabelled", "once north", "relabelled"]
    assert seen(got, "dev-north0001") == ["enrolled"]


async def test_relabellings_found_together_in_a_backlog_are_each_honoured(
    store: HubStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection, "LABELS_FRESH_S", 3600.0)
    await store.add_device(device("dev-mover00001", NORTH))
    async with receiving() as (url, got):
        drain = Drain(
            north_sink(tmp_path, url),
            store,
            make_sink,
            source="https://hub.test",
            bounds=Bounds(10**9, 1e9),
        )
        async with leading(drain):  # a first term: the device's labels are read
            await caught_up(store)
        # While no replica leads, the device leaves the selection and comes back.
        await relabel(store, "dev-mover00001", SOUTH)
        await online(store, "dev-mover00001", "while south")
        await relabel(store, "dev-mover00001", NORTH)
        await online(store, "dev-mover00001", "north again")
        async with leading(drain):  # the next term finds all four in one batch
            await caught_up(store)
    assert seen(got, "dev-mover00001") == ["enrolled", "relabelled", "relabelled", "north again"]
