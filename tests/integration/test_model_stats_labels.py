"""An hour's model statistics keep at most `rollup.MAX_LABELS` labels, on both back-ends,
however many roll-ups of one batch make the row (hub/store/modelfold.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hub.store import HubStore
from hub.store.modelfold import Folder
from outpost import rollup
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


def _labelled(labels: dict[str, int]) -> bytes:
    count = sum(labels.values())
    return msgspec.msgpack.encode(
        {"kind": "rollup", "period_s": 60.0,
         "models": {"cam@1": {"count": count, "latency_ms": {"1": count},
                              "confidence": [0] * 9 + [count], "labels": labels}}}
    )  # fmt: skip


async def test_an_hour_made_from_several_roll_ups_keeps_at_most_max_labels(
    store: HubStore,
) -> None:
    """The cap held for an hour's row already stored, not for one made new from several
    roll-ups of one batch: two of 32 labels each made a row of 64."""
    now = time.time()
    first = {f"a{n:02d}": 2 for n in range(rollup.MAX_LABELS)}
    second = {f"b{n:02d}": 1 for n in range(rollup.MAX_LABELS)}
    folder = Folder(now=now)

    def fold(db: Any) -> str:
        folder.add(db, "dev-1", [(1, now, _labelled(first)), (2, now, _labelled(second))])
        folder.write(db)
        (labels,) = db.execute("SELECT labels FROM model_stats").fetchone()
        return str(labels)

    kept = json.loads(await store.run(fold))
    assert len(kept) == rollup.MAX_LABELS
    assert set(kept) - {rollup.OTHER} <= set(first)  # the most counted
    assert sum(kept.values()) == 3 * rollup.MAX_LABELS  # the rest in "other"


def _fold_one(db: Any, folder: Folder, row: tuple[int, float, bytes]) -> None:
    folder.add(db, "dev-1", [row])
    folder.write(db)


async def test_label_counts_beyond_the_cap_add_to_other(store: HubStore) -> None:
    """A 200-class model, two roll-ups of one hour in two batches: the hub kept the 64
    most counted labels and dropped the rest's counts (the labels summed to 137 of 200
    inferences) instead of adding them to "other", as the agent does."""
    now = time.time()
    halves = [{f"class-{n}": 1 for n in range(0, 100)}, {f"class-{n}": 1 for n in range(100, 200)}]
    for seq, half in enumerate(halves, start=1):
        capped = dict(list(half.items())[: rollup.MAX_LABELS - 1])  # as the agent caps them
        capped[rollup.OTHER] = len(half) - len(capped)
        await store.run(_fold_one, Folder(now=now), (seq, now, _labelled(capped)))

    count, labels = await store.run(
        lambda db: db.execute("SELECT count, labels FROM model_stats").fetchone()
    )
    kept = json.loads(labels)
    assert count == 200
    assert len(kept) == rollup.MAX_LABELS
    assert sum(kept.values()) == count
    assert kept[rollup.OTHER] == 200 - (rollup.MAX_LABELS - 1)
