"""`POST /api/v1/bundles` on the running hub: one import at a time (each may hold a GiB
and is unpacked before its signature can be checked), and what it stores is counted
in /metrics as what the MQTT ingest stores is."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp

from hub.app import Hub
from outpost.courier import parts
from tests.api_client import ApiClient
from tests.courier_rig import attach, bundle, enroll, records
from tests.integration.test_metrics import _scrape
from tests.integration.test_model_metrics import rollup_body
from tests.support import eventually


async def test_a_second_import_while_one_runs_is_refused_with_retry_after(
    hub: Hub, api: ApiClient
) -> None:
    courier = await api.token("courier")
    release = asyncio.Event()

    async def slow_upload() -> AsyncIterator[bytes]:
        yield parts.MARK  # the start of a part; the rest waits
        await release.wait()
        yield b"not the rest of a part"

    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    async with aiohttp.ClientSession() as session:

        async def first_upload() -> int:
            async with session.post(
                api.url + "/api/v1/bundles",
                data=slow_upload(),
                headers={
                    "Authorization": f"Bearer {courier}",
                    "Content-Type": "application/octet-stream",
                },
                ssl=context,
            ) as reply:
                return reply.status

        first = asyncio.create_task(first_upload())

        async def refused_busy() -> bool:
            nonlocal first
            if first.done():  # it came while a probe's import ran: send it again
                assert first.result() == 503
                first = asyncio.create_task(first_upload())
                return False
            reply = await api.call("POST", "/api/v1/bundles", token=courier, raw=b"x")
            if reply.status == 503:
                assert reply.error["code"] == "busy"
                assert "one at a time" in reply.error["message"]
                assert reply.headers["Retry-After"] == "10"
                return True
            assert reply.status == 422, reply.body  # the first's import not begun yet
            return False

        try:
            await eventually(refused_busy, timeout=30, what="a second import refused as busy")
        finally:
            release.set()
            status = await first
        assert status == 422  # not a bundle: refused, and the import is done
    reply = await api.call("POST", "/api/v1/bundles", token=courier, raw=b"x")
    assert reply.status == 422, reply.body


async def test_what_an_import_stores_is_counted_in_the_metrics(hub: Hub, api: ApiClient) -> None:
    r = attach(hub.paths, hub.config, hub.parts.store)
    site = await enroll(r, "dev-counted01")
    batches = [
        records("metrics", [1], bodies=[rollup_body(model="m@1", count=7)]),
        records("results", [1, 2, 3]),
    ]
    upload = parts.as_part(bundle(r, site, batches), "bundle")
    viewer, courier = await api.token("viewer"), await api.token("courier")
    before = await _scrape(api, viewer)

    reply = await api.call("POST", "/api/v1/bundles", token=courier, raw=upload)
    assert reply.status == 200, reply.body
    assert reply.body["stored"] == {"metrics": 1, "results": 3}

    after = await _scrape(api, viewer)

    def moved(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert moved("outpost_hub_inferences_total", (("model", "m"),)) == 7
    assert moved("outpost_hub_records_stored_total", (("stream", "metrics"),)) == 1
    assert moved("outpost_hub_records_stored_total", (("stream", "results"),)) == 3
