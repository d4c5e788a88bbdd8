"""Shadow candidates on the device against a hub that cannot serve them, or that stops
the shadow roll-out midway (the same real HTTPS server, model directory and interpreter
as test_model_deploy.py): the candidate's download never holds back a live release, and
a candidate the hub no longer names never starts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from edge.inference.runner import ModelRunner
from outpost import wire
from tests.integration.test_model_deploy import (  # noqa: F401 - the fixture
    SURFACE,
    VIBRATION,
    Device,
    device,
)
from tests.support import eventually


def offer_of(
    releases: list[wire.SignedRelease], shadows: list[wire.SignedRelease]
) -> wire.ModelReleases:
    return wire.ModelReleases(releases=releases, shadows=shadows)


def asked_for(on: Device, name: str) -> int:
    return sum(1 for asked, _ in on.server.requests if asked == name)


async def downloads_stopped() -> bool:
    """No download task of the deployer's is running (they are named `deploy.download`)."""
    return not any(t.get_name() == "deploy.download" for t in asyncio.all_tasks())


async def test_a_shadow_download_that_cannot_finish_gives_way_to_a_live_release(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    """The hub cannot serve the candidate (503 for ever); it then rolls out 1.0.1 of the
    live model: 1.0.1 deploys, and the candidate's download resumes after it."""
    busy = device.server.serve(SURFACE, "1.0.0", errors=[503] * 100_000)
    device.server.serve(VIBRATION, "1.0.1")
    candidate = device.release(SURFACE, "1.0.0")
    assert device.deployer is not None
    await device.deployer.offer(offer_of([], [candidate]))

    async def tried() -> bool:
        return asked_for(device, SURFACE) >= 2

    await eventually(tried, timeout=10, what="the candidate's download being retried")
    await device.deployer.offer(offer_of([device.release(VIBRATION, "1.0.1")], [candidate]))

    await device.state(VIBRATION, "1.0.1", "active")
    assert device.service.slots.serving(VIBRATION) == "1.0.1"

    busy.errors.clear()  # the hub serves the candidate again: its turn comes back

    async def shadowing() -> bool:
        return device.service.shadows.candidate(SURFACE) == "1.0.0"

    await eventually(shadowing, timeout=10, what="the candidate run in shadow")
    assert device.service.slots.serving(SURFACE) is None  # a candidate never serves


async def test_a_shadow_download_stops_when_the_hub_no_longer_names_it(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    device.server.serve(SURFACE, "1.0.0", errors=[503] * 100_000)
    assert device.deployer is not None
    await device.deployer.offer(offer_of([], [device.release(SURFACE, "1.0.0")]))

    async def tried() -> bool:
        return asked_for(device, SURFACE) >= 2

    await eventually(tried, timeout=10, what="the candidate's download being retried")
    await device.deployer.offer(offer_of([], []))  # the shadow roll-out stopped

    await eventually(downloads_stopped, timeout=10, what="the candidate's download to stop")
    asked = asked_for(device, SURFACE)
    # The worker is free: a live release deploys, and the candidate is not asked for again.
    device.server.serve(VIBRATION, "1.0.1")
    await device.deployer.offer(offer_of([device.release(VIBRATION, "1.0.1")], []))
    await device.state(VIBRATION, "1.0.1", "active")
    assert asked_for(device, SURFACE) == asked
    assert device.service.shadows.candidate(SURFACE) is None


@pytest.fixture
def loads_held() -> Iterator[tuple[threading.Event, threading.Event]]:
    """A shadow candidate's load waits until the second event is set; the first says it
    has started. (Only the hold is added: the real load runs after it.)"""
    started, go_on = threading.Event(), threading.Event()
    real = ModelRunner.load

    def held(runner: ModelRunner) -> None:
        if runner.background:  # the candidate's runner, never a live one
            started.set()
            go_on.wait(timeout=60)
        real(runner)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelRunner, "load", held)
        try:
            yield started, go_on
        finally:
            go_on.set()  # never leave a thread waiting


async def test_a_shadow_withdrawn_while_its_candidate_loads_does_not_start(
    device: Device,  # noqa: F811 - the fixture
    loads_held: tuple[threading.Event, threading.Event],
) -> None:
    started, go_on = loads_held
    device.server.serve(SURFACE, "1.0.0")
    device.server.serve(VIBRATION, "1.0.1")
    assert device.deployer is not None
    await device.deployer.offer(offer_of([], [device.release(SURFACE, "1.0.0")]))

    async def loading() -> bool:
        return started.is_set()

    await eventually(loading, timeout=10, what="the candidate's load")
    # The hub stops the shadow roll-out and rolls out 1.0.1 of the live model.
    await device.deployer.offer(offer_of([device.release(VIBRATION, "1.0.1")], []))
    go_on.set()

    # The worker takes the live release once it is done with the candidate.
    await device.state(VIBRATION, "1.0.1", "active")
    assert device.service.shadows.candidate(SURFACE) is None
    assert device.service.slots.serving(SURFACE) is None
