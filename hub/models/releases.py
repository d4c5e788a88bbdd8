"""Uploaded models: check that each loads and gives its sample's expected output, keep
it, and sign its release once (see `outpost/release.py`).

The check runs the same runner the agent runs (`edge.inference`), on the hub's own
runtime, so a model that cannot load or answers wrongly is refused at the door, before
any device spends a download on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.store import HubStore, StoredModel, modelfiles
from outpost import files, release, schema
from outpost.modelbundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SAMPLE_FILE,
    BundleError,
    Manifest,
    Sample,
    UploadRefusedError,
    check_upload,
    read_bundle,
)

logger = logging.getLogger(__name__)

# A release travels to each device inside one MQTT message (`wire.SignedRelease`).
RELEASE_MAX_BYTES = 192 * 1024


class ModelRefusedError(ValueError):
    """An upload is refused; the message names what was wrong."""


class ModelExistsError(ModelRefusedError):
    """That name and version are taken: versions are immutable."""


@dataclass(frozen=True)
class Checked:
    model: StoredModel
    runtime: str


class Staging:
    """An upload in progress: the model file streamed to disk with its size and sha256."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.folder = root / f".upload-{secrets.token_hex(6)}"
        self.folder.mkdir(mode=0o700)
        self._file = (self.folder / MODEL_FILE).open("wb")
        self._digest = hashlib.sha256()
        self._max = max_bytes
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max:
            raise ModelRefusedError(f"model: larger than the hub's limit of {self._max} bytes")
        self._digest.update(chunk)
        self._file.write(chunk)

    def finish(self) -> str:
        self._file.close()
        return self._digest.hexdigest()

    def discard(self) -> None:
        self._file.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class ModelShelf:
    def __init__(self, root: Path, store: HubStore, key: ed25519.Ed25519PrivateKey) -> None:
        self.root = root
        self._store = store
        self._key = key
        # One upload at a time from the name check to the database row: two uploads of
        # the same version must not both place their files.
        self._lock = asyncio.Lock()

    @property
    def shared(self) -> bool:
        """Replicas on one database: a model's file is kept there too, since a device
        may download it from a replica that did not take the upload."""
        return self._store.dialect == "postgresql"

    def model_file(self, name: str, version: str) -> Path:
        return self.root / name / version / MODEL_FILE

    async def local_file(self, name: str, version: str) -> Path | None:
        """The model's file on this replica's disk, copied from the database first if
        another replica took the upload; None if neither has it.

        A copy is kept only if it is the file the catalogue's release names: bytes of
        another file under the version would be refused by every device, for good.
        """
        path = self.model_file(name, version)
        if path.exists() or not self.shared:
            return path if path.exists() else None
        stored = await self._store.model(name, version)
        content = await self._store.model_file(name, version)
        if stored is None or content is None:
            return None
        if await asyncio.to_thread(_sha256, content) != stored.sha256:
            logger.error(
                "model %s %s: the database's copy is not the file its release names", name, version
            )
            return None
        await asyncio.to_thread(self._cache, path, content)
        return path

    @staticmethod
    def _cache(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        files.replace(path, content, files.PRIVATE)

    async def accept(
        self,
        staging: Staging,
        sha256: str,
        metadata: dict[str, Any],
        sample: dict[str, Any],
        *,
        by: str,
    ) -> Checked:
        """Check the staged upload, keep it and sign its release; the staging folder is
        moved into place or removed."""
        try:
            async with self._lock:
                return await self._accept(staging, sha256, metadata, sample, by)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging.folder, True)

    async def _accept(
        self,
        staging: Staging,
        sha256: str,
        metadata: dict[str, Any],
        sample_doc: dict[str, Any],
        by: str,
    ) -> Checked:
        try:
            manifest, sample = check_upload(staging.size, sha256, metadata, sample_doc)
        except UploadRefusedError as exc:
            raise ModelRefusedError(str(exc)) from exc
        if await self._store.model(manifest.name, manifest.version) is not None:
            raise ModelExistsError(_exists(manifest))
        runtime = await asyncio.to_thread(self._check, staging.folder, manifest, sample)
        signed = release.sign(self._key, manifest, sample, time.time())
        if len(signed.document) > RELEASE_MAX_BYTES:
            raise ModelRefusedError(
                f"sample: the signed release would be {len(signed.document)} bytes, over "
                f"{RELEASE_MAX_BYTES} (it travels in one message): use a smaller sample"
            )
        stored = StoredModel(
            name=manifest.name,
            version=manifest.version,
            sha256=sha256,
            size=staging.size,
            manifest=manifest.to_dict(),
            document=signed.document,
            signature=signed.signature,
            uploaded_at=time.time(),
            uploaded_by=by,
        )
        if self.shared:
            # The row first, with the file, in one transaction; then the folder. An upload
            # that loses the version to another replica places nothing, and the copy the
            # other replicas cache is always the file the release names.
            content = await asyncio.to_thread((staging.folder / MODEL_FILE).read_bytes)
            if not await self._store.run(modelfiles.add_model_with_file, stored, content):
                raise ModelExistsError(_exists(manifest))
            await asyncio.to_thread(self._place, staging.folder, manifest)
        else:
            # One hub: its disk holds the only copy, so the file is placed before the row
            # (a listed model always has its file).
            await asyncio.to_thread(self._place, staging.folder, manifest)
            if not await self._store.add_model(stored):
                await asyncio.to_thread(shutil.rmtree, self.root / manifest.name / manifest.version)
                raise ModelExistsError(_exists(manifest))
        logger.info("model %s %s accepted (%d bytes)", manifest.name, manifest.version, stored.size)
        return Checked(stored, runtime)

    @staticmethod
    def _check(folder: Path, manifest: Manifest, sample: Sample) -> str:
        """Load the model and run its sample, as a device will (blocking)."""
        from edge.inference.runner import ModelFault, ModelRunner
        from edge.inference.runtime import RuntimeMissing, choose_runtime

        (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict()), encoding="utf-8")
        (folder / SAMPLE_FILE).write_text(json.dumps(schema.dump(sample)), encoding="utf-8")
        try:
            bundle = read_bundle(folder)
            runtime = choose_runtime()
        except (BundleError, RuntimeMissing) as exc:
            raise ModelRefusedError(str(exc)) from exc
        runner = ModelRunner(bundle, runtime, num_threads=1, interpreters=1, queue_limit=0)
        try:
            runner.load()  # checks the tensors against the manifest, then runs the sample
        except ModelFault as exc:
            raise ModelRefusedError(f"model check failed: {exc}") from exc
        except Exception as exc:  # the interpreter's own errors for odd files
            raise ModelRefusedError(f"model check failed: {type(exc).__name__}: {exc}") from exc
        finally:
            runner.close()
        return runtime.label

    def _place(self, folder: Path, manifest: Manifest) -> None:
        home = self.root / manifest.name
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = home / manifest.version
        if target.exists():  # left by an upload whose database write failed
            shutil.rmtree(target)
        files.sync_tree(folder)
        folder.rename(target)
        files.sync_tree(home)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _exists(manifest: Manifest) -> str:
    return (
        f"model {manifest.name} {manifest.version} exists; versions are immutable, "
        "upload it under a new version"
    )
