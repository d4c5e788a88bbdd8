"""Bring a release's model file from the hub to an installed bundle: download it
(resuming, and retrying with back-off), check it against the signed manifest, assemble
the bundle and install it beside the serving version, without activating it.

Apart from deploy.py, which decides what to deploy, activates it and keeps and reports
each release's state, because this is the file work (HTTPS, disk, checksums) and knows
nothing of states.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from edge import download
from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from outpost import backoff, files, release, schema, tls
from outpost.modelbundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SAMPLE_FILE,
    BundleError,
    Manifest,
    check_model_file,
    file_sha256,
)

logger = logging.getLogger(__name__)

DOWNLOADS = ".downloads"  # hidden: the model directory lists only model names
RETRY_CAP_S = 60.0  # a hub that is down is asked again at most this often


class ReleaseRefused(Exception):
    """A release is refused; the message is the detail reported."""

    def __init__(self, detail: str, *, final: bool = True) -> None:
        super().__init__(detail)
        self.final = final


class Withdrawn(ReleaseRefused):
    """The download stopped: the hub's newest offer no longer names the release, or (a
    shadow candidate's) a live release goes first."""

    def __init__(self) -> None:
        super().__init__("no longer offered by the hub: its download stopped", final=False)


class ReleaseFetcher:
    """Downloads and installs the model files of releases, one call at a time."""

    def __init__(
        self,
        paths: DevicePaths,
        hub_url: str,
        directory: ModelDirectory,
        *,
        retry_cap: float = RETRY_CAP_S,
    ) -> None:
        self._paths = paths
        self._hub_url = hub_url
        self._directory = directory
        self._retry_cap = retry_cap
        self._downloads = directory.root / DOWNLOADS

    async def stage(self, name: str, version: str, sha256: str, data: bytes) -> None:
        """A release's model file carried by courier bundle (edge/courier.py), kept where
        a finished download would be: the deploy then checks it against the signed
        manifest (size, sha256) and installs it exactly as a downloaded one."""
        part = self._downloads / _part_name(name, version, sha256)

        def keep() -> None:
            self._downloads.mkdir(parents=True, exist_ok=True, mode=0o700)
            files.replace(part, data, files.PRIVATE)

        await asyncio.to_thread(keep)

    async def installed(self, m: Manifest) -> bool:
        """Whether this exact release is installed, its model file whole: a copy that
        went bad on disk (bit rot, a write the file system lost) is downloaded again,
        and the install puts the new file in its place."""

        def check() -> bool:
            entry = self._directory.entry(m.name, m.version)
            if entry.bundle is None or entry.bundle.manifest.sha256 != m.sha256:
                return False
            try:
                check_model_file(entry.bundle.model_path, m)
            except BundleError as exc:
                logger.error("model %s %s: installed copy damaged: %s", m.name, m.version, exc)
                return False
            return True

        return await asyncio.to_thread(check)

    async def remove(self, m: Manifest) -> None:
        """Delete a refused version, so that it does not load at the next start."""
        try:
            await asyncio.to_thread(self._directory.remove, m.name, m.version)
        except (BundleError, OSError) as exc:
            logger.error("model %s %s: refused version not removed: %s", m.name, m.version, exc)

    async def download(self, offered: release.Release, wanted: Iterable[Manifest] = ()) -> Path:
        """The release's model file, whole and checked against the signed manifest (a
        download cancelled meanwhile resumes where it stopped next time). Partial
        downloads of the model's other releases go, but those still `wanted` (a shadow
        candidate's, set aside while a live release of the model came first)."""
        m = offered.manifest
        part = self._part(m)
        spared = {part, *(self._part(w) for w in wanted)}
        await asyncio.to_thread(_discard_others, self._downloads, m.name, spared)
        resumed = await self._download(m, part)
        try:
            await asyncio.to_thread(_check, part, m)
        except BundleError as exc:
            if not resumed:
                raise ReleaseRefused(
                    f"the download does not match the signed manifest: {exc}"
                ) from exc
            # Pieces from several responses (or a partial that a power cut left with a
            # garbage tail): one clean download before calling the bytes wrong.
            logger.warning("model %s %s: resumed download does not match; again", m.name, m.version)
            await self._download(m, part)
            try:
                await asyncio.to_thread(_check, part, m)
            except BundleError as again:
                raise ReleaseRefused(
                    f"the download does not match the signed manifest: {again}"
                ) from again
        return part

    async def install_downloaded(self, offered: release.Release, part: Path) -> None:
        """Install the checked file's bundle beside the serving version."""
        m = offered.manifest
        folder = self._downloads / f"{m.name}@{m.version}.bundle"
        try:
            await asyncio.to_thread(_assemble, folder, part, offered)
            await asyncio.to_thread(self._directory.install, folder, activate=False)
        except BundleError as exc:
            raise ReleaseRefused(f"not installed: {exc}") from exc
        except OSError as exc:  # the device's disk (full), not the release: tried again
            # The checked file goes back where the retry looks for it, not out with the
            # folder: on a metered link a full disk must not cost the download again.
            await asyncio.to_thread(_put_back, folder / MODEL_FILE, part)
            raise ReleaseRefused(f"not installed: {exc}", final=False) from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

    def _part(self, m: Manifest) -> Path:
        return self._downloads / _part_name(m.name, m.version, m.sha256)

    async def _download(self, m: Manifest, part: Path) -> bool:
        """Complete `part`, retrying (with back-off) until it is whole or refused; return
        whether it was resumed."""
        url = f"{self._hub_url}/api/v1/device/models/{m.name}/{m.version}/{MODEL_FILE}"
        attempt = 0
        while True:
            try:
                # Built per attempt: the certificate may have been renewed meanwhile.
                context = await asyncio.to_thread(
                    tls.client_context, self._paths.ca_cert, self._paths.cert, self._paths.key
                )
                return await download.fetch(url, part, m.size, context)
            except download.DownloadRefused as exc:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise ReleaseRefused(f"the hub refused the download: {exc}") from exc
            except download.DiskFull as exc:  # said, not retried for ever: tried again
                raise ReleaseRefused(f"not downloaded: {exc}", final=False) from exc
            except download.WrongSize as exc:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise ReleaseRefused(
                    f"the download does not match the signed manifest: {exc}"
                ) from exc
            except (download.DownloadError, OSError) as exc:
                wait = backoff.delay(attempt, cap=self._retry_cap)
                attempt += 1
                logger.warning(
                    "model %s %s: download failed (%s); retry %d in %.1f s",
                    m.name,
                    m.version,
                    exc,
                    attempt,
                    wait,
                )
                await asyncio.sleep(wait)


def _check(part: Path, m: Manifest) -> None:
    """The downloaded file is the one the signed manifest names, or it is deleted."""
    size = part.stat().st_size
    digest = file_sha256(part) if size == m.size else ""
    if size != m.size:
        problem = f"{size} bytes, expected {m.size}"
    elif digest != m.sha256:
        problem = f"sha256 {digest}, expected {m.sha256}"
    else:
        return
    part.unlink(missing_ok=True)
    raise BundleError(problem)


def _assemble(folder: Path, part: Path, offered: release.Release) -> None:
    """A bundle folder from the downloaded file and the signed manifest and sample."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.replace(part, folder / MODEL_FILE)
    manifest = json.dumps(offered.manifest.to_dict(), indent=2, sort_keys=True)
    (folder / MANIFEST_FILE).write_text(manifest + "\n", encoding="utf-8")
    sample = json.dumps(schema.dump(offered.sample), sort_keys=True)
    (folder / SAMPLE_FILE).write_text(sample + "\n", encoding="utf-8")


def _part_name(name: str, version: str, sha256: str) -> str:
    return f"{name}@{version}.{sha256[:16]}.part"


def _put_back(assembled: Path, part: Path) -> None:
    """Return an assembled bundle's model file to its partial download's name."""
    try:
        os.replace(assembled, part)
    except FileNotFoundError:  # never moved: it is at `part` still
        pass
    except OSError as exc:  # a rename needs no room; anything else: download again
        logger.warning("%s not kept for the retry: %s", assembled, exc)


def _discard_others(downloads: Path, name: str, keep: set[Path]) -> None:
    """Drop partial downloads of other releases of this model (superseded)."""
    if not downloads.is_dir():
        return
    for other in downloads.glob(f"{name}@*"):
        if other in keep:
            continue
        if other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
        else:
            other.unlink(missing_ok=True)
