"""What bounds a local program's hold on the agent through the local API, on a real store
with the shipped models on the real interpreter: an inference body larger than the
model's input could need is refused unread, a model's queue counts requests whose body
is still being decoded, and the records only the agent writes are refused."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgpack
import pytest

from edge.inference.runner import ModelBusy
from edge.localbody import BODY_SLACK_BYTES, BYTES_PER_VALUE
from outpost.modelbundle import read_bundle
from tests.local_api import LocalClient, local_api
from tests.support import SHIPPED_MODELS

SURFACE, VIBRATION = "surface-defect", "vibration-anomaly"


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _sample(model: str) -> list[object]:
    folder = next(f for f in SHIPPED_MODELS if f.parent.name == model)
    sample = read_bundle(folder).sample
    assert sample is not None
    return list(sample.input)


async def test_a_body_larger_than_the_model_s_input_could_need_is_refused_unread(
    tmp_path: Path,
) -> None:
    """Before: each body was decoded into Python objects (a 4 MB JSON list of floats:
    ~40 MiB) and held in the model's queue until its shape was refused on the worker;
    17 such requests to one model took the agent from 151 to 929 MiB (its unit allows
    256M)."""
    async with local_api(tmp_path) as served:
        client = LocalClient(served.socket)
        try:
            body = b'{"input": [' + b",".join([b"0.1"] * 1_000_000) + b"]}"  # 4.0 MB
            limit = 96 * 96 * BYTES_PER_VALUE + BODY_SLACK_BYTES
            status, answer = await client.post_raw(f"/v1/infer/{SURFACE}", body, "application/json")
            assert (status, answer["error"]["code"]) == (413, "too_large"), answer
            message = answer["error"]["message"]
            assert f"{len(body)} bytes" in message
            assert f"{SURFACE} (shape [1, 96, 96, 1], 9216 values)" in message
            assert f"at most {limit}" in message
            packed = msgpack.packb({"input": [0.1] * 1_000_000})
            status, answer = await client.post_raw(
                f"/v1/infer/{SURFACE}", packed, "application/msgpack"
            )
            assert (status, answer["error"]["code"]) == (413, "too_large"), answer
            status, answer = await client.post_raw(
                f"/v1/explain/{SURFACE}", body, "application/json"
            )
            assert (status, answer["error"]["code"]) == (413, "too_large"), answer

            # Just over the small model's limit, and just under it (a wrong shape then).
            vibration = 128 * 3 * BYTES_PER_VALUE + BODY_SLACK_BYTES
            over = b'{"input": [' + b"0," * ((vibration - 10) // 2) + b"0]}"
            assert vibration < len(over) < vibration + 8
            status, answer = await client.post_raw(
                f"/v1/infer/{VIBRATION}", over, "application/json"
            )
            assert (status, answer["error"]["code"]) == (413, "too_large"), answer
            under = b'{"input": [' + b"0," * ((vibration - 20) // 2) + b"0]}"
            status, answer = await client.post_raw(
                f"/v1/infer/{VIBRATION}", under, "application/json"
            )
            assert (status, answer["error"]["code"]) == (400, "bad_shape"), answer
            # A real input, pretty-printed at an indent of 4, is well within.
            pretty = json.dumps({"input": _sample(SURFACE), "dtype": "int8"}, indent=4)
            status, answer = await client.post_raw(
                f"/v1/infer/{SURFACE}", pretty.encode(), "application/json"
            )
            assert status == 200, answer

            # The burst of the review: 17 such bodies at once (1 running + 16 queued).
            before, peak, done = _rss_mib(), 0.0, asyncio.Event()

            async def watch() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, _rss_mib())
                    await asyncio.sleep(0.01)  # sampling, not synchronisation

            watcher = asyncio.create_task(watch())
            answers = await asyncio.gather(
                *(client.post_raw(f"/v1/infer/{SURFACE}", body, "application/json")
                  for _ in range(17))
            )  # fmt: skip
            done.set()
            await watcher
            assert [status for status, _ in answers] == [413] * 17
            # The bodies' bytes themselves (17 x 4 MB, read whole by the server, and the
            # client's): well under what decoding them took (+780 MiB).
            assert peak - before < 250, f"+{peak - before:.0f} MiB for 17 requests"
        finally:
            await client.close()


async def test_a_model_s_queue_counts_the_requests_whose_body_is_being_decoded(
    tmp_path: Path,
) -> None:
    """A large body is decoded on a thread; while it is, it holds a place in the model's
    queue: a burst past the queue is refused (429) before its bodies become objects."""
    async with local_api(tmp_path, interpreters=1, queue_limit=0) as served:
        service = served.service
        sample = _sample(SURFACE)
        with service.decoding(SURFACE):
            with pytest.raises(ModelBusy), service.decoding(SURFACE):
                pass
            with pytest.raises(ModelBusy):
                await service.infer(SURFACE, sample, "int8")
        outcome = await service.infer(SURFACE, sample, "int8")  # its place given back
        assert outcome.inference.label
        (listed,) = [m for m in service.models() if m["name"] == SURFACE]
        assert listed["refused_busy"] == 2

        # Through the API: a large JSON body (decoded on a thread) while the place is held.
        client = LocalClient(served.socket)
        try:
            body = json.dumps({"input": [[[0.49803921]] * 96] * 96}).encode()
            assert len(body) > 64 * 1024
            with service.decoding(SURFACE):
                status, answer = await client.post_raw(
                    f"/v1/infer/{SURFACE}", body, "application/json"
                )
            assert (status, answer["error"]["code"]) == (429, "busy"), answer
            status, answer = await client.post_raw(f"/v1/infer/{SURFACE}", body, "application/json")
            assert status == 200, answer
        finally:
            await client.close()


@pytest.mark.parametrize(
    ("stream", "kind", "what"),
    [("metrics", "rollup", "the agent's roll-ups"), ("results", "task", "tasks")],
)
async def test_a_record_of_a_kind_only_the_agent_writes_is_refused_and_not_stored(
    tmp_path: Path, stream: str, kind: str, what: str
) -> None:
    """Before: any program on the device could post a "rollup" metrics record, and the
    hub folded it as the agent's own into the fleet's metrics, model statistics, drift
    and store-fill alerts."""
    forged = {"kind": kind, "models": {"made-up@9": {"count": 2**40}}, "task_id": "tsk-x"}
    async with local_api(tmp_path) as served:
        client = LocalClient(served.socket)
        try:
            status, answer = await client.append(stream, [{"n": 1}, forged])
            assert (status, answer["error"]["code"]) == (400, "bad_field"), answer
            assert answer["error"]["message"] == (
                f"body.records[1].kind: {kind!r} is reserved for {what} on the {stream} stream"
            )
            # Nothing of the refused batch was stored: the next record is the first.
            status, answer = await client.append(stream, [{"n": 2, "kind": "other"}])
            assert (status, answer["first_seq"]) == (201, 1), answer
        finally:
            await client.close()
