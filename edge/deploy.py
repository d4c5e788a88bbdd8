"""The agent's side of model roll-out: install and activate the releases the hub names.

The hub publishes, retained on `down/models`, the signed release of each model the device
should run. For each release not yet handled the deployer, one at a time: checks the
signature and the policy, downloads the model file (resuming after a lost connection),
checks it against the signed manifest, installs it beside the serving version, and asks
the inference service to load, self-test and swap it in. Every step that can refuse
leaves the previous version serving. What became of each release is reported (and kept
on disk, see `deploystate.py`); a version that then fails in use is rolled back by the
inference service and reported `rolled_back`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge import deploystate, download
from edge.deploystate import DeployStates, Key, Record
from edge.identity import DevicePaths
from edge.inference.service import InferenceService
from outpost import backoff, files, release, schema, tls, wire
from outpost.modelbundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    SAMPLE_FILE,
    BundleError,
    Manifest,
    file_sha256,
)
from outpost.signing import Signed

logger = logging.getLogger(__name__)

Report = Callable[[wire.ModelState], Awaitable[None]]

STATE_FILE = ".deploy-states.json"
DOWNLOADS = ".downloads"  # hidden: the model directory lists only model names
RETRY_CAP_S = 60.0  # a hub that is down is asked again at most this often


class _Refused(Exception):
    """A release is refused; the message is the detail reported."""

    def __init__(self, detail: str, *, final: bool = True) -> None:
        super().__init__(detail)
        self.final = final


class Deployer:
    """Brings the models the hub names into service, one release at a time."""

    def __init__(
        self,
        paths: DevicePaths,
        hub_url: str,
        service: InferenceService,
        report: Report,
        *,
        retry_cap: float = RETRY_CAP_S,
    ) -> None:
        self._paths = paths
        self._hub_url = hub_url.rstrip("/")
        self._service = service
        self._slots = service.slots
        self._directory = service.directory
        self._report = report
        self._retry_cap = retry_cap
        self._state_file = self._directory.root / STATE_FILE
        self._downloads = self._directory.root / DOWNLOADS
        self._states: DeployStates | None = None
        self._loading = asyncio.Lock()
        self._saving = asyncio.Lock()  # one writer of the state file at a time
        self._key: ed25519.Ed25519PublicKey | None = None
        self._pending: dict[str, release.Release] = {}  # by model name: the newest offer wins
        self._shadow_pending: dict[str, release.Release] = {}  # candidates to shadow, by name
        self._current: Key | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ public

    async def offer(self, releases: wire.ModelReleases) -> None:
        """Take the hub's list of releases; queue those not yet handled (never waits for
        a download). A release refused by its signature is reported at once."""
        states = await self._loaded()
        try:
            key = await self._public_key()
        except (OSError, ValueError) as exc:
            logger.error("model releases not checked: no usable hub key: %s", exc)
            for signed in releases.releases:
                detail = f"the hub's signing key is unusable: {exc}"
                await self._refuse_unverified(states, signed.document, detail, final=False)
            return
        # Each list is the whole of what the hub wants: a queued release it no longer
        # names is dropped (the one in progress finishes).
        self._pending.clear()
        for signed in releases.releases:
            try:
                offered = release.verify(key, Signed(signed.document, signed.signature))
            except release.ReleaseError as exc:
                await self._refuse_unverified(states, signed.document, str(exc))
                continue
            m = offered.manifest
            triple = (m.name, m.version, m.sha256)
            if triple == self._current:
                continue
            action = states.decide(triple, self._slots.serving(m.name))
            if action == "deploy":
                self._pending[m.name] = offered
                self._wake.set()
            elif action == "report" and (record := states.find(triple)) is not None:
                await self._send(record)  # refused before: the hub must issue a new version
            elif (record := states.find(triple)) is not None:
                # Already active: say so again, a roll-out of this version (say back to
                # it after a halted one) waits on the word.
                await self._send(record)
        await self._offer_shadows(key, releases.shadows)

    async def _offer_shadows(
        self, key: ed25519.Ed25519PublicKey, shadows: list[wire.SignedRelease]
    ) -> None:
        """The candidates the hub wants run in shadow: load those not yet loaded, drop
        those it no longer names (a shadow roll-out promoted or stopped)."""
        wanted: dict[str, release.Release] = {}
        for signed in shadows:
            try:
                offered = release.verify(key, Signed(signed.document, signed.signature))
            except release.ReleaseError as exc:
                logger.warning("shadow release refused: %s", exc)
                continue
            wanted[offered.manifest.name] = offered
        shadowing = self._service.shadows.versions()
        for name, version in shadowing.items():
            if name not in wanted or wanted[name].manifest.version != version:
                await self._service.shadows.drop(name)
        self._shadow_pending = {
            name: offered
            for name, offered in wanted.items()
            if shadowing.get(name) != offered.manifest.version
        }
        if self._shadow_pending:
            self._wake.set()

    async def run(self) -> None:
        """Deploy queued releases one at a time, until cancelled."""
        states = await self._loaded()
        for record in states.latest():
            if record.state == "active" and record.previous:
                self._slots.arm_rollback(record.name, record.version, record.previous)
        self._slots.on_rollback = self._rolled_back
        try:
            while True:
                if not self._pending and self._shadow_pending:
                    name = next(iter(self._shadow_pending))
                    await self._shadow(self._shadow_pending.pop(name))
                    continue
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                name = next(iter(self._pending))
                offered = self._pending.pop(name)
                m = offered.manifest
                self._current = (m.name, m.version, m.sha256)
                try:
                    await self._deploy(offered)
                except _Refused as exc:
                    logger.warning("model %s %s refused: %s", m.name, m.version, exc)
                    await self._set(_record(m, "failed", str(exc), final=exc.final))
                except Exception as exc:  # one release's surprise must not stop the rest
                    logger.exception("model %s %s: deploy failed", m.name, m.version)
                    await self._set(_record(m, "failed", f"{type(exc).__name__}: {exc}"))
                finally:
                    self._current = None
        finally:
            self._slots.on_rollback = None

    async def stage(self, name: str, version: str, sha256: str, data: bytes) -> None:
        """A release's model file carried by courier bundle (edge/courier.py), kept where
        a finished download would be: the deploy then checks it against the signed
        manifest (size, sha256) and installs it exactly as a downloaded one."""
        part = self._downloads / f"{name}@{version}.{sha256[:16]}.part"

        def keep() -> None:
            self._downloads.mkdir(parents=True, exist_ok=True, mode=0o700)
            files.replace(part, data, files.PRIVATE)

        await asyncio.to_thread(keep)

    def queued(self) -> list[tuple[str, str]]:
        """(name, version) of each release waiting its turn, in order."""
        return [(r.name, r.version) for r in self._pending.values()]

    def states(self) -> list[wire.ModelState]:
        """The current state of each model's latest release (sent again after hello)."""
        return [r.message() for r in self._states.latest()] if self._states else []

    # ---------------------------------------------------------------- the steps

    async def _deploy(self, offered: release.Release) -> None:
        from edge.inference.runner import ModelFault

        m = offered.manifest
        allowed = self._service.allowed_models
        if allowed and m.name not in allowed:
            raise _Refused(
                f"{m.name} is not allowed by policy (allowed: {', '.join(sorted(allowed))})",
                final=False,  # a later policy may allow it: try again when offered again
            )
        installed = await asyncio.to_thread(self._installed, m)
        if not installed:
            await self._set(_record(m, "downloading"))
            await self._fetch_and_install(offered)
        try:
            # What it replaced is what it falls back to: read at the swap, not before
            # the download (a roll-back may have happened meanwhile).
            before = await self._slots.activate(m.name, m.version)
        except (ModelFault, BundleError) as exc:
            if not installed:  # ours: a refused version must not load at the next start
                await asyncio.to_thread(self._remove, m)
            raise _Refused(f"not activated: {exc}") from exc
        previous = before if before is not None and before != m.version else ""
        await self._set(_record(m, "active", previous=previous))
        logger.info("model %s %s active (release deployed)", m.name, m.version)

    async def _shadow(self, offered: release.Release) -> None:
        """Install a candidate without activating it, and run it in shadow."""
        m = offered.manifest
        try:
            if not await asyncio.to_thread(self._installed, m):
                await self._fetch_and_install(offered)
            await self._service.shadow(m.name, m.version)
        except Exception as exc:  # the live version is untouched; the hub sees no samples
            logger.warning("model %s %s not run in shadow: %s", m.name, m.version, exc)

    async def _fetch_and_install(self, offered: release.Release) -> None:
        m = offered.manifest
        part = self._downloads / f"{m.name}@{m.version}.{m.sha256[:16]}.part"
        await asyncio.to_thread(_discard_others, self._downloads, m.name, part)
        resumed = await self._download(m, part)
        try:
            await asyncio.to_thread(_check, part, m)
        except BundleError as exc:
            if not resumed:
                raise _Refused(f"the download does not match the signed manifest: {exc}") from exc
            # Pieces from several responses (or a partial that a power cut left with a
            # garbage tail): one clean download before calling the bytes wrong.
            logger.warning("model %s %s: resumed download does not match; again", m.name, m.version)
            await self._download(m, part)
            try:
                await asyncio.to_thread(_check, part, m)
            except BundleError as again:
                raise _Refused(
                    f"the download does not match the signed manifest: {again}"
                ) from again
        folder = self._downloads / f"{m.name}@{m.version}.bundle"
        try:
            await asyncio.to_thread(_assemble, folder, part, offered)
            await asyncio.to_thread(self._directory.install, folder, activate=False)
        except (BundleError, OSError) as exc:
            raise _Refused(f"not installed: {exc}") from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)

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
                raise _Refused(f"the hub refused the download: {exc}") from exc
            except download.WrongSize as exc:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise _Refused(f"the download does not match the signed manifest: {exc}") from exc
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

    # ------------------------------------------------------------- bookkeeping

    async def _rolled_back(self, name: str, bad: str, restored: str, reason: str) -> None:
        """The inference service gave up `bad` for `restored`: say so, and remember."""
        states = await self._loaded()
        found = states.find_version(name, bad)
        record = Record(
            name=name,
            version=bad,
            sha256=found.sha256 if found else "",
            state="rolled_back",
            detail=f"{reason}; {restored} serves again",
        )
        await self._set(record)

    async def _refuse_unverified(
        self, states: DeployStates, document: bytes, detail: str, *, final: bool = True
    ) -> None:
        name, version = _claimed(document)
        logger.warning("model release %s %s refused: %s", name or "?", version or "?", detail)
        # Reported, not kept: an unverified document must not become the model's current
        # record (it could name any version). The retained list comes again on every
        # connect, and is refused again.
        await self._send(Record(name, version, "", "failed", detail, final))

    async def _set(self, record: Record) -> None:
        """Keep a release's new state on disk, then report it."""
        states = await self._loaded()
        states.put(record)
        data = states.dump()
        async with self._saving:
            try:
                await asyncio.to_thread(deploystate.write, self._state_file, data)
            except OSError as exc:  # a full disk must not stop the roll-out; reported anyway
                logger.error("deploy states not saved: %s", exc)
        await self._send(record)

    async def _send(self, record: Record) -> None:
        try:
            await self._report(record.message())
        except Exception:  # reporting is best effort: states are sent again after hello
            logger.exception("model state of %s %s not reported", record.name, record.version)

    async def _loaded(self) -> DeployStates:
        async with self._loading:
            if self._states is None:
                self._states = await asyncio.to_thread(DeployStates.load, self._state_file)
            return self._states

    async def _public_key(self) -> ed25519.Ed25519PublicKey:
        if self._key is None:
            pem = await asyncio.to_thread(self._paths.hub_signing_pub.read_bytes)
            key = serialization.load_pem_public_key(pem)
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ValueError(f"{self._paths.hub_signing_pub}: not an Ed25519 public key")
            self._key = key
        return self._key

    def _installed(self, m: Manifest) -> bool:
        """Whether this exact release is installed already (blocking)."""
        entry = self._directory.entry(m.name, m.version)
        return entry.bundle is not None and entry.bundle.manifest.sha256 == m.sha256

    def _remove(self, m: Manifest) -> None:
        try:
            self._directory.remove(m.name, m.version)
        except (BundleError, OSError) as exc:
            logger.error("model %s %s: refused version not removed: %s", m.name, m.version, exc)


# ---------------------------------------------------------------- blocking helpers


def _record(
    m: Manifest,
    state: wire.DeployState,
    detail: str = "",
    *,
    final: bool = True,
    previous: str = "",
) -> Record:
    return Record(m.name, m.version, m.sha256, state, detail, final, previous)


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


def _discard_others(downloads: Path, name: str, keep: Path) -> None:
    """Drop partial downloads of other releases of this model (superseded)."""
    if not downloads.is_dir():
        return
    for other in downloads.glob(f"{name}@*"):
        if other == keep:
            continue
        if other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
        else:
            other.unlink(missing_ok=True)


def _claimed(document: bytes) -> tuple[str, str]:
    """The name and version an unverified release claims, for the report only."""
    try:
        body = msgspec.msgpack.decode(document)
        manifest = body.get("manifest") if isinstance(body, dict) else None
        name = manifest.get("name") if isinstance(manifest, dict) else None
        version = manifest.get("version") if isinstance(manifest, dict) else None
    except (ValueError, TypeError, RecursionError):
        return "", ""
    return (
        name[:64] if isinstance(name, str) else "",
        version[:32] if isinstance(version, str) else "",
    )
