"""Agent releases the hub takes (outpost/agentrelease.py): every file checked against
the folder's manifest, copied into the data folder, and the manifest signed with the
hub's signing key, which devices already trust. Roll-outs give it to devices
(hub/store/agentrollouts.py), which download its files through the API and install it
side by side (edge/selfupdate.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.paths import HubPaths
from hub.store import HubStore
from hub.store import agentreleases as registry
from hub.store.agentreleases import StoredAgentRelease
from outpost import __version__, agentrelease, files
from outpost.agentrelease import AgentManifest, ReleaseFileError
from outpost.signing import Signed

STALE_UPLOAD_S = 600.0  # a version's folder with no listed release, older: left by a cut upload


class AgentReleaseExistsError(ReleaseFileError):
    """That version was taken already: a version is never replaced."""


class AgentShelf:
    def __init__(self, paths: HubPaths, store: HubStore, key: ed25519.Ed25519PrivateKey) -> None:
        self._root = paths.agent_releases
        self._store = store
        self._key = key

    @property
    def root(self) -> Path:
        """Where the releases' files are: <root>/<version>/<wheel>."""
        return self._root

    def staging(self) -> Path:
        """A new empty folder beside the releases, for an upload to arrive in (blocks)."""
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Path(tempfile.mkdtemp(".upload", ".agent-", self._root))

    async def accept(
        self, folder: Path, *, by: str, now: float | None = None, staged: bool = False
    ) -> AgentManifest:
        """Check, copy and sign a release folder; `ReleaseFileError` saying why not.

        `staged`: the folder is one of this shelf's `staging()` folders (an API upload),
        on the same file system: its files are moved, not copied, so the release takes
        its size on disk once while it is taken, not twice. The caller removes the
        folder either way."""
        now = time.time() if now is None else now
        # Reading and hashing tens of MiB: off the event loop (the API's too).
        manifest = await asyncio.to_thread(agentrelease.read_folder, folder)
        if agentrelease.version_order(manifest.min_hub_version) > agentrelease.version_order(
            __version__
        ):
            raise ReleaseFileError(
                f"agent release {manifest.version} needs a hub from {manifest.min_hub_version}"
                f" on to roll it out; this hub is {__version__}: upgrade the hub first"
            )
        target = self._root / manifest.version
        if target.exists() and not await self._left_by_a_cut_upload(target, manifest.version):
            raise AgentReleaseExistsError(f"agent release {manifest.version} exists already")
        # Each upload copies into a folder of its own; the version is then claimed by
        # making its folder, which only one of several uploads at once can do.
        staging = Path(await asyncio.to_thread(self.staging))
        claimed = False
        try:
            await asyncio.to_thread(_stage, folder, manifest, staging, staged)
            try:
                await asyncio.to_thread(target.mkdir, 0o700)
            except FileExistsError as exc:
                raise AgentReleaseExistsError(
                    f"agent release {manifest.version} exists already"
                ) from exc
            claimed = True
            await asyncio.to_thread(_move_files, staging, target)
            # Replicas keep the files in the database, written with the release row: a
            # listed release always has them, and only the bytes its manifest names.
            kept = [
                (entry.name, await asyncio.to_thread((target / entry.name).read_bytes))
                for entry in (manifest.files if self.shared else [])
            ]
            signed = agentrelease.sign(self._key, manifest, now)
            stored = StoredAgentRelease(
                manifest.version,
                json.dumps(msgspec.to_builtins(manifest), sort_keys=True),
                signed.document,
                signed.signature,
                now,
                by,
            )
            if not await self._store.run(registry.add, stored, kept):  # another replica's
                raise AgentReleaseExistsError(f"agent release {manifest.version} exists already")
            claimed = False  # listed, with its files: kept
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            if claimed:
                await asyncio.to_thread(shutil.rmtree, target, True)
        return manifest

    async def _left_by_a_cut_upload(self, target: Path, version: str) -> bool:
        """Whether the version's folder is what an upload killed before its row was
        written left (no release of it listed, and untouched for `STALE_UPLOAD_S`, so no
        upload is filling it now): removed, so the version can be uploaded again."""
        listed = await self._store.run(registry.all_releases)
        if any(r.version == version for r in listed):
            return False
        try:
            age = time.time() - (await asyncio.to_thread(target.stat)).st_mtime
        except FileNotFoundError:
            return True
        if age < STALE_UPLOAD_S:
            raise AgentReleaseExistsError(
                f"agent release {version} is being uploaded (or an upload of it was cut "
                f"short less than {STALE_UPLOAD_S // 60:.0f} minutes ago): try again later"
            )
        await asyncio.to_thread(shutil.rmtree, target, True)
        return True

    @property
    def shared(self) -> bool:
        """Replicas on one database: a release's files are kept there too, since a device
        may download them from a replica that did not take the upload."""
        return self._store.dialect == "postgresql"

    async def local_file(self, version: str, name: str) -> Path | None:
        """A release's file on this replica's disk, copied from the database first if
        another replica took the upload; None if neither has it."""
        path = self._root / version / name
        if await asyncio.to_thread(path.is_file) or not self.shared:
            return path if await asyncio.to_thread(path.is_file) else None
        content = await self._store.run(registry.get_file, version, name)
        if content is None:
            return None
        await asyncio.to_thread(_cache, path, content)
        return path

    async def releases(self) -> list[StoredAgentRelease]:
        return await self._store.run(registry.all_releases)

    async def package(self, version: str, dest: Path) -> None:
        """A release as a device receives it, in `dest`: the signed manifest and the
        files (what a download or a courier bundle brings)."""
        found = [r for r in await self.releases() if r.version == version]
        if not found:
            raise ReleaseFileError(f"no agent release {version}")
        (dest / agentrelease.FILES).mkdir(parents=True)
        agentrelease.write_signed(dest, Signed(found[0].document, found[0].signature))
        source = self._root / version
        for path in sorted(source.iterdir()):
            await asyncio.to_thread(shutil.copyfile, path, dest / agentrelease.FILES / path.name)


def _stage(folder: Path, manifest: AgentManifest, staging: Path, move: bool) -> None:
    """Copy (or move) the release's files into the empty folder `staging`, each checked
    again there: what is signed is what was checked, whatever changed `folder` since."""
    for entry in manifest.files:
        source, staged = folder / agentrelease.FILES / entry.name, staging / entry.name
        if move:
            source.rename(staged)
        else:
            shutil.copyfile(source, staged)
        agentrelease.check_file(staged, entry)


def _move_files(staging: Path, target: Path) -> None:
    for path in staging.iterdir():
        path.rename(target / path.name)


def _cache(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.replace(path, content, files.PRIVATE)
