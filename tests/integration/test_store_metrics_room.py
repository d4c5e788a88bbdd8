"""Room in a full metrics stream: a roll-up never merges records already handed out for
upload (the hub may hold them: merged into a record numbered above its mark, they would
be counted again), and an append larger than the whole stream is refused, leaving the
stored metrics as they were."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from edge.store import AgentStore, StreamFullError
from edge.store.streams import Bounds
from hub.monitoring.modelmetrics import InferenceTotals
from hub.store import HubStore
from hub.store.records import Upload

UNBOUNDED = Bounds(0, 0, 0)


def _bounds(metrics: Bounds) -> dict[str, Bounds]:
    return {"results": UNBOUNDED, "events": UNBOUNDED, "metrics": metrics}


def _rollup() -> dict[str, Any]:
    """One minute's roll-up, counting one inference."""
    return {
        "kind": "rollup",
        "period_s": 60.0,
        "tasks": {"done": 0, "failed": 0, "queued": 0, "running": 0},
        "errors": {},
        "models": {
            "cam@1": {
                "count": 1,
                "latency_ms": {"1": 1},
                "latency_sum_ms": 1.0,
                "confidence": [0] * 9 + [1],
                "confidence_sum": 0.95,
                "labels": {"ok": 1},
            }
        },
    }


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
async def test_a_rollup_does_not_merge_what_the_hub_may_hold(tmp_path: Path, restart: bool) -> None:
    path = tmp_path / "agent.db"
    agent = AgentStore(path, _bounds(Bounds(20, 0, 0)))  # 20 roll-ups: 20 minutes offline
    await agent.start()
    hub = HubStore(tmp_path / "hub.db")
    totals = InferenceTotals()
    now = time.time()
    try:
        for _ in range(20):
            await agent.append("metrics", [_rollup()])
        # The link is back: the oldest 5 go out and the hub stores them...
        rows = await agent.batch_packed("metrics", 0, max_records=5, max_bytes=1 << 20)
        assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
        totals.add((await hub.apply_uploads([Upload("d", "metrics", 1, 5, rows)], now=now)).rollups)
        if restart:  # ...and the agent restarts before their ack arrives
            await agent.close()
            agent = AgentStore(path, _bounds(Bounds(20, 0, 0)))
            await agent.start()
        # The next minute's roll-up finds the stream full and makes room.
        await agent.append("metrics", [_rollup()])
        # The agent sends again from its last ack, then after 5 once the ack arrives.
        for after in (0, 5):
            rows = await agent.batch_packed("metrics", after, max_records=100, max_bytes=1 << 20)
            upload = Upload("d", "metrics", after + 1, rows[-1][0], rows)
            totals.add((await hub.apply_uploads([upload], now=now)).rollups)
            if after == 5:
                await agent.acknowledge("metrics", rows[-1][0])
        assert totals.models["cam"].count == 21, "21 inferences were made"
    finally:
        await agent.close()
        hub.close()


async def test_records_not_handed_out_are_still_rolled_up(tmp_path: Path) -> None:
    agent = AgentStore(tmp_path / "agent.db", _bounds(Bounds(40, 0, 0)))
    await agent.start()
    try:
        for _ in range(40):
            await agent.append("metrics", [_rollup()])
        await agent.batch("metrics", 0, max_records=5, max_bytes=1 << 20)  # 1..5 sent
        await agent.append("metrics", [_rollup()])
        rows = await agent.batch("metrics", 0, max_records=100, max_bytes=1 << 20)
        stats = await agent.stats()
    finally:
        await agent.close()
    counts = [b["models"]["cam@1"]["count"] for _, _, b in rows]
    assert [s for s, _, _ in rows][:5] == [1, 2, 3, 4, 5], "what was sent is left as it was"
    assert counts[:5] == [1] * 5
    assert stats["counters"]["rolled_up.metrics"] == 10
    assert counts[5] == 10, "the oldest records not sent were merged"
    assert sum(counts) == 41


async def test_an_append_larger_than_the_stream_is_refused_and_the_backlog_kept(
    tmp_path: Path,
) -> None:
    store = AgentStore(tmp_path / "agent.db", _bounds(Bounds(0, 10_000, 0)))
    await store.start()
    try:
        for n in range(50):  # days offline: 50 samples within the 10 KB bound
            await store.append("metrics", [{"cpu": float(n), "note": "x" * 120}])
        before = await store.batch("metrics", 0, max_records=1000, max_bytes=1 << 20)
        with pytest.raises(StreamFullError) as refused:
            await store.append("metrics", [{"blob": "y" * 200} for _ in range(60)])
        after = await store.batch("metrics", 0, max_records=1000, max_bytes=1 << 20)
        stats = await store.stats()
    finally:
        await store.close()
    assert "larger than the metrics stream may hold" in refused.value.reason
    assert "10000 bytes" in refused.value.reason
    assert after == before, "nothing stored was evicted or rolled up"
    assert stats["counters"]["refused.metrics"] == 60
    assert "evicted.metrics" not in stats["counters"]
