"""The daemons set their code aside from the cyclic collector before they build their
state (outpost/heap.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
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


def test_settling_freezes_what_the_process_holds_after_a_collection() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    garbage = weakref.ref(Cycle())  # only a collection frees a cycle
    assert garbage() is not None
    assert gc.get_freeze_count() == 0
    frozen = heap.settle()
    assert frozen == gc.get_freeze_count() > 1000  # modules, classes, functions
    assert garbage() is None  # collected, not frozen for good
    assert not any(o is Cycle for o in gc.get_objects())  # set aside from the collector


class _State:
    """Something a daemon builds as it runs (an instance: tracked by the collector)."""


class _Daemon:
    """What `_serve` needs of a hub or an agent; its run notes what was frozen as it
    began building its state."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.notifier = Notifier(None)
        self.frozen_when_run = -1
        self.made_in_run: object = None

    async def run(self) -> None:
        self.frozen_when_run = gc.get_freeze_count()
        self.made_in_run = _State()
        self.ready.set()


@pytest.mark.parametrize("serve", [hub_daemon._serve, agent_cli._serve], ids=["hub", "agent"])
async def test_each_daemon_settles_before_it_runs_and_not_after(
    serve: Callable[[Any], Awaitable[int]],
) -> None:
    daemon = _Daemon()
    assert await serve(daemon) == 0
    assert daemon.frozen_when_run > 1000
    collectable = gc.get_objects()
    assert any(o is daemon.made_in_run for o in collectable)  # what its run built
    assert not any(o is _Daemon for o in collectable)  # the code it was given
