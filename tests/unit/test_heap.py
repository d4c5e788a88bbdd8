"""The daemons set their start-up objects aside from the cyclic collector once ready
(outpost/heap.py), and only then."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from edge import cli as agent_cli
from hub.cli import daemon as hub_daemon
from outpost import heap
from outpost.sdnotify import Notifier


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()  # the test process's own objects go back to the collector after
    yield
    gc.unfreeze()


async def _until_frozen() -> None:
    async with asyncio.timeout(30):
        while not gc.get_freeze_count():
            await asyncio.sleep(0.01)


async def test_nothing_is_frozen_before_ready_and_start_up_is_after() -> None:
    ready = asyncio.Event()
    settling = asyncio.create_task(heap.settle_when(ready))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0
    ready.set()
    await settling
    assert gc.get_freeze_count() > 1000  # modules, classes, functions: all of them


class _Daemon:
    """What `_serve` needs of a hub or an agent: it comes up, then runs until the
    collector was settled (or 30 s pass)."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.notifier = Notifier(None)
        self.frozen_before_ready = -1

    async def run(self) -> None:
        self.frozen_before_ready = gc.get_freeze_count()
        self.ready.set()
        await _until_frozen()


@pytest.mark.parametrize("serve", [hub_daemon._serve, agent_cli._serve], ids=["hub", "agent"])
async def test_each_daemon_settles_once_it_is_ready(
    serve: Callable[[Any], Awaitable[int]],
) -> None:
    daemon = _Daemon()
    assert await serve(daemon) == 0
    assert daemon.frozen_before_ready == 0
    assert gc.get_freeze_count() > 1000
