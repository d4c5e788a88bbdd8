"""The leader's periodic work outlives a unit of work that fails: a database locked or
restarting, or the fence refusing a replica that no longer leads. One such failure used
to end the shadow judge, and with it (through the hub's supervisor) the whole hub."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.models.rollouts import RolloutService
from hub.store import HubStore
from hub.store.leadership import NotLeaderError

DEADLINE_S = 30.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = await asyncio.to_thread(HubStore, tmp_path / "hub.db")
    yield opened
    opened.close()


async def test_the_shadow_judge_goes_on_after_a_failed_unit_and_a_refused_fence(
    store: HubStore,
) -> None:
    units = 0

    def fence(db: Any) -> None:
        nonlocal units
        units += 1
        if units == 2:
            raise sqlite3.OperationalError("database is locked")
        if units == 3:
            raise NotLeaderError("hub-b no longer leads (epoch 7)")

    async def publish(topic: str, payload: bytes) -> None:
        raise AssertionError("nothing to publish: no shadow roll-out")

    judging = asyncio.create_task(
        RolloutService(store, publish, ed25519.Ed25519PrivateKey.generate()).judge_shadows(
            store.fenced(fence), every_s=0.01
        )
    )
    try:
        async with asyncio.timeout(DEADLINE_S):
            while units < 5:  # judged again after both failures
                assert not judging.done(), judging
                await asyncio.sleep(0.01)  # a poll with a deadline
    finally:
        judging.cancel()
        await asyncio.gather(judging, return_exceptions=True)
