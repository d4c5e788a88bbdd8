"""A hub with no devices yet, on both back-ends: the dashboard's overview and a policy
refresh of no devices answer with nothing, rather than failing (PostgreSQL refuses the
empty `IN ()` that SQLite takes: the live dashboard of a new PostgreSQL hub once showed
nothing at all, its every snapshot failing)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.store import HubStore
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def test_the_overview_of_an_empty_fleet(store: HubStore) -> None:
    found = await store.overview(after=None, max_devices=50, max_rollouts=5, max_events=50)
    assert (found.devices, found.devices_total, found.devices_online) == ([], 0, 0)
    assert found.policy == {}


async def test_a_policy_refresh_of_no_devices(store: HubStore) -> None:
    assert await store.refresh_policies([], now=time.time()) == []
    assert await store.refresh_policies(None, now=time.time()) == []
