"""`POST /v1/explain/{model}` on the real interpreter, flooded: explanations run one at a
time on a thread of their own, EXPLAIN_WAITING more wait their turn, the rest are refused
at once (429), and meanwhile the agent's other work on asyncio's default executor (here
a large JSON inference body, decoded there) does not wait behind them."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from edge.inference.explaining import EXPLAIN_WAITING
from tests.local_api import LocalClient, local_api

SURFACE = "surface-defect"
DEADLINE_S = 120.0
# An image of the model's shape whose JSON (~200 KB) is decoded on a worker thread.
IMAGE = [[[0.4980392] for _ in range(96)] for _ in range(96)]


async def test_a_flood_of_explanations_is_bounded_and_holds_up_nothing_else(
    tmp_path: Path,
) -> None:
    """Before: each explanation took a thread of asyncio's default executor (6 on 2
    cores) for up to 20,000 model calls, with no bound: an inference that took 14 ms
    alone took 29.3 s behind 6 explanations, as would telemetry, swaps and renewals."""
    async with local_api(tmp_path) as served:
        client = LocalClient(served.socket)
        try:
            explain = json.dumps({"input": IMAGE, "patch": 8, "stride": 4, "budget": 20000})

            async def explained() -> tuple[int, Any]:
                return await client.post_raw(
                    f"/v1/explain/{SURFACE}", explain.encode(), "application/json"
                )

            # More than the default executor has threads, and more than may wait.
            flood = (os.cpu_count() or 1) + 4 + EXPLAIN_WAITING + 1
            tasks = [asyncio.create_task(explained()) for _ in range(flood)]
            admitted = EXPLAIN_WAITING + 1
            async with asyncio.timeout(DEADLINE_S):
                while sum(t.done() for t in tasks) < flood - admitted:
                    await asyncio.sleep(0.01)  # a poll with a deadline
            refused = [t.result() for t in tasks if t.done()]
            assert len(refused) == flood - admitted
            for status, answer in refused:
                assert (status, answer["error"]["code"]) == (429, "busy"), answer
                assert f"limit {admitted}" in answer["error"]["message"]

            infer = json.dumps({"input": IMAGE}).encode()
            assert len(infer) > 64 * 1024
            status, answer = await client.post_raw(
                f"/v1/infer/{SURFACE}", infer, "application/json"
            )
            assert status == 200, answer
            assert not all(t.done() for t in tasks), "answered only after the explanations"

            async with asyncio.timeout(DEADLINE_S * 3):
                results = await asyncio.gather(*(t for t in tasks if not t.done()))
            assert [status for status, _ in results] == [200] * admitted, results
            assert all(answer["method"] == "occlusion" for _, answer in results)
        finally:
            await client.close()
