"""Release files with replicas on PostgreSQL: whichever replica a device downloads a model
or an agent release from, it gets the bytes the signed release names, never those of an
upload that lost the version to another replica or was cut short (a device refuses a
file whose sha256 does not match the release, for good)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.fleet.agentreleases import AgentShelf
from hub.models.releases import Checked, ModelExistsError, ModelShelf, Staging
from hub.paths import HubPaths
from hub.store import HubStore
from outpost import agentrelease
from outpost.modelbundle import Manifest, Sample
from tests import agent_releases
from tests.databases import hub_sql
from tests.model_upload import bundle_parts
from tests.support import SHIPPED_MODELS

NAME, VERSION = "vibration-anomaly", "9.0.0"
AGENT_VERSION = "0.96.0"
KEY = ed25519.Ed25519PrivateKey.generate()


class HeldShelf(ModelShelf):
    """A replica whose upload stops after its catalogue check, until the test lets it go:
    so another replica takes the version in between, as two uploads at once may."""

    def __init__(self, root: Path, store: HubStore) -> None:
        super().__init__(root, store, KEY)
        self.checking = threading.Event()
        self.go = threading.Event()

    def _check(self, folder: Path, manifest: Manifest, sample: Sample) -> str:  # type: ignore[override]
        self.checking.set()
        self.go.wait()
        return ModelShelf._check(folder, manifest, sample)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[tuple[HubStore, HubStore, HubStore]]:
    """Three replicas' stores on one database."""
    opened = (HubStore(pg_url), HubStore(pg_url), HubStore(pg_url))
    try:
        yield opened
    finally:
        for store in opened:
            store.close()


def parts(shipped: int) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """A shipped model as an upload of NAME VERSION (two of them: two different files)."""
    model, manifest, sample = bundle_parts(SHIPPED_MODELS[shipped], version=VERSION)
    manifest["name"] = NAME
    return model, manifest, sample


async def upload(shelf: ModelShelf, shipped: int) -> Checked:
    model, manifest, sample = parts(shipped)
    staging = Staging(shelf.root, 64 << 20)
    staging.write(model)
    return await shelf.accept(staging, staging.finish(), manifest, sample, by="t")


async def served(shelf: ModelShelf) -> str | None:
    path = await shelf.local_file(NAME, VERSION)
    return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()


async def test_the_loser_of_an_upload_race_serves_the_winners_file(
    stores: tuple[HubStore, HubStore, HubStore], tmp_path: Path
) -> None:
    a = ModelShelf(tmp_path / "a", stores[0], KEY)
    b = HeldShelf(tmp_path / "b", stores[1])
    late = asyncio.create_task(upload(b, 1))
    try:
        # A bound only so that a failure cannot hang the run: B gets there at once.
        assert await asyncio.to_thread(b.checking.wait, 120), "B's upload never got going"
        won = await upload(a, 0)  # while B, which found the version free, is checking
    finally:
        b.go.set()
    with pytest.raises(ModelExistsError):
        await late
    assert await served(a) == won.model.sha256
    assert await served(b) == won.model.sha256  # not the file of its own lost upload
    assert await served(ModelShelf(tmp_path / "c", stores[2], KEY)) == won.model.sha256


async def test_a_stale_file_row_is_replaced_by_the_upload(
    stores: tuple[HubStore, HubStore, HubStore], pg_url: str, tmp_path: Path
) -> None:
    # What an upload cut short before its catalogue row left (or a lost upload of an
    # older hub): another file under the version.
    hub_sql(
        pg_url,
        "INSERT INTO model_files (name, version, content) VALUES (?, ?, ?)",
        (NAME, VERSION, parts(1)[0]),
    )
    won = await upload(ModelShelf(tmp_path / "a", stores[0], KEY), 0)
    assert await served(ModelShelf(tmp_path / "b", stores[1], KEY)) == won.model.sha256


async def test_a_replica_caches_no_copy_but_the_file_its_release_names(
    stores: tuple[HubStore, HubStore, HubStore], pg_url: str, tmp_path: Path
) -> None:
    await upload(ModelShelf(tmp_path / "a", stores[0], KEY), 0)
    # The database's copy is another file (written by an older hub whose upload lost the
    # version): nothing is served, rather than bytes every device would refuse for good.
    hub_sql(pg_url, "UPDATE model_files SET content = ? WHERE name = ?", (parts(1)[0], NAME))
    b = ModelShelf(tmp_path / "b", stores[1], KEY)
    assert await b.local_file(NAME, VERSION) is None
    assert not b.model_file(NAME, VERSION).exists()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agent-release") / AGENT_VERSION
    return agent_releases.of_this_checkout(
        tmp_path_factory, out, AGENT_VERSION, ("x86_64",), dependencies=False
    )


async def test_an_agent_release_replaces_file_rows_left_by_a_cut_upload(
    stores: tuple[HubStore, HubStore, HubStore], pg_url: str, built: Path, tmp_path: Path
) -> None:
    manifest = agentrelease.read_folder(built)
    (entry,) = manifest.files
    # A first upload of the version stored an earlier build's wheel, and its hub died
    # before the release row.
    hub_sql(
        pg_url,
        "INSERT INTO agent_release_files (version, name, content) VALUES (?, ?, ?)",
        (AGENT_VERSION, entry.name, b"PK-an-earlier-build-of-the-same-version"),
    )
    a = AgentShelf(HubPaths(tmp_path / "a"), stores[0], KEY)
    assert (await a.accept(built, by="t")).version == AGENT_VERSION
    b = AgentShelf(HubPaths(tmp_path / "b"), stores[1], KEY)
    path = await b.local_file(AGENT_VERSION, entry.name)
    assert path is not None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    rows = hub_sql(
        pg_url, "SELECT name FROM agent_release_files WHERE version = ?", (AGENT_VERSION,)
    )
    assert [r[0] for r in rows] == [entry.name]
    listed = json.loads((await a.releases())[0].manifest)
    assert [f["sha256"] for f in listed["files"]] == [entry.sha256]
