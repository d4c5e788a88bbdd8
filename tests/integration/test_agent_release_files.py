"""Where a hub keeps an agent release's files, on each back-end: a single hub on SQLite
keeps them in its data folder only; replicas on PostgreSQL keep them in the database
too, so a replica that did not take the upload (its folder lacks them) still serves a
device the whole file, with resume, and caches it."""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub
from hub.store import agentreleases as registry
from tests import agent_releases
from tests.api_client import ApiClient
from tests.conftest import Enroller

VERSION = "0.97.0"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("release") / VERSION
    return agent_releases.of_this_checkout(
        tmp_path_factory, out, VERSION, ("x86_64",), dependencies=False
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_replica_without_the_files_serves_them_from_the_database(
    hub: Hub, api: ApiClient, enroll_device: Enroller, built: Path, hub_backend: str
) -> None:
    uploaded = await agent_releases.upload(hub, await api.token("admin"), built)
    assert uploaded.status == 201, uploaded.body
    manifest = json.loads((built / "manifest.json").read_text())
    (wheel,) = manifest["files"]
    content = (built / "files" / wheel["name"]).read_bytes()
    stored = await hub.parts.store.run(registry.get_file, VERSION, wheel["name"])
    paths, _ = await enroll_device()
    device = ssl.create_default_context(cafile=str(paths.ca_cert))
    device.load_cert_chain(paths.cert, paths.key)
    url = f"{hub.config.hub_url}/api/v1/device/agent-releases/{VERSION}/{wheel['name']}"
    local = hub.paths.agent_releases / VERSION

    # The replica that took the upload, or the single hub, serves it from its folder.
    async with aiohttp.ClientSession() as session, session.get(url, ssl=device) as whole:
        assert whole.status == 200
        assert await whole.read() == content

    # Another replica: the same database, a folder without the release.
    shutil.rmtree(local)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=device) as whole:
            answer = await whole.read()
        async with session.get(url, ssl=device, headers={"Range": "bytes=100-"}) as rest:
            tail = await rest.read()
    if hub_backend == "postgresql":
        assert stored == content
        assert whole.status == 200
        assert hashlib.sha256(answer).hexdigest() == wheel["sha256"]
        assert (rest.status, tail) == (206, content[100:])
        assert (local / wheel["name"]).read_bytes() == content  # cached for the next
    else:
        assert stored is None  # one hub: files on disk only, the table stays empty
        assert whole.status == 404
        assert "has no file" in json.loads(answer)["error"]["message"]
