"""A device's latest store fill and task depths (device_health), folded from its roll-ups
whatever its clock says, on both back-ends (hub/store/modelfold.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from hub.store import HubStore
from hub.store.modelstats import WINDOW_S
from hub.store.records import Upload
from tests.databases import BACKENDS, database
from tests.support import enrolled_device

DAY_S = 86400.0


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


def _rollup(fill: float) -> bytes:
    stores = {s: {"records": 1, "bytes": 1, "fill": fill} for s in ("results", "events")}
    return msgspec.msgpack.encode(
        {"kind": "rollup", "period_s": 60.0, "models": {}, "errors": {}, "tasks": {},
         "store": stores}
    )  # fmt: skip


async def _fold(store: HubStore, device_id: str, seq: int, ts: float, fill: float) -> None:
    upload = Upload(device_id, "metrics", seq, seq, [(seq, ts, _rollup(fill))])
    await store.apply_uploads([upload], now=time.time())


async def _over(store: HubStore) -> int:
    gauges = await store.fleet_gauges(now=time.time())
    return gauges.stores_over["results"]


async def test_a_clock_far_behind_still_reports_its_store_fill(store: HubStore) -> None:
    """Stamped before the statistics' 7-day window, a roll-up skipped the rest of folding,
    its store fill included: a 99 % full store never reached the gauge or its alert."""
    await store.add_device(enrolled_device("dev-late"))
    behind = time.time() - WINDOW_S - DAY_S

    await _fold(store, "dev-late", 1, behind, 0.99)
    assert await _over(store) == 1

    # Its clock still behind (and not moving on): a later fill still replaces it.
    await _fold(store, "dev-late", 2, behind - 3600, 0.10)
    assert await _over(store) == 0


async def test_a_fill_from_before_the_window_does_not_replace_a_newer_one(
    store: HubStore,
) -> None:
    """A late delivery of a week's roll-ups (a courier bundle): the oldest, stamped before
    the window, is no newer than the last; the last one's fill is the device's."""
    await store.add_device(enrolled_device("dev-1"))
    now = time.time()
    rows = [(1, now - WINDOW_S - DAY_S, _rollup(0.10)), (2, now - 60, _rollup(0.99))]

    await store.apply_uploads([Upload("dev-1", "metrics", 1, 2, rows)], now=now)

    assert await _over(store) == 1
