"""The agent's side of model roll-out: install and activate the releases the hub names.

The hub publishes, retained on `down/models`, the signed release of each model the device
should run. For each release not yet handled the deployer, one at a time: checks the
signature and the policy, downloads the model file (resuming after a lost connection),
checks it against the signed manifest, installs it beside the serving version, and asks
the inference service to load, self-test and swap it in. Every step that can refuse
leaves the previous version serving. What became of each release is reported (and kept
on disk, see `deploystate.py`); a version that then fails in use is rolled back by the
inference service and reported `rolled_back`. The download and install, file work that
knows nothing of states, are in `deployfetch.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge import deploystate, offerorder
from edge.deployfetch import RETRY_CAP_S, ReleaseFetcher, ReleaseRefused
from edge.deploystate import DeployStates, Key, Record
from edge.identity import DevicePaths
from edge.inference.service import InferenceService
from outpost import release, signing, wire
from outpost.modelbundle import BundleError, Manifest
from outpost.signing import Signed

logger = logging.getLogger(__name__)

Report = Callable[[wire.ModelState], Awaitable[None]]

STATE_FILE = ".deploy-states.json"


class Deployer:
    """Brings the models the hub names into service, one release at a time."""

    def __init__(
        self,
        paths: DevicePaths,
        hub_url: str,
        service: InferenceService,
        report: Report,
        *,
        device_id: str,
        retry_cap: float = RETRY_CAP_S,
    ) -> None:
        self._paths = paths
        self._device_id = device_id  # what an offer's seal must name
        self._service = service
        self._slots = service.slots
        self._directory = service.directory
        self._report = report
        self._fetcher = ReleaseFetcher(
            paths, hub_url.rstrip("/"), service.directory, retry_cap=retry_cap
        )
        self._state_file = self._directory.root / STATE_FILE
        self._states: DeployStates | None = None
        self._loading = asyncio.Lock()
        self._offering = asyncio.Lock()  # offers taken one at a time, in the order they came
        self._saving = asyncio.Lock()  # one writer of the state file at a time
        self._key: ed25519.Ed25519PublicKey | None = None
        self._pending: dict[str, release.Release] = {}  # by model name: the newest offer wins
        self._shadow_pending: dict[str, release.Release] = {}  # candidates to shadow, by name
        self._current: Key | None = None
        # The releases of the newest offer taken, by model name (None: none taken yet):
        # what is still wanted when a download ends.
        self._offered: dict[str, release.Release] | None = None
        self._fetching: asyncio.Task[Path] | None = None  # the current release's download
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ public

    async def offer(self, releases: wire.ModelReleases) -> None:
        """Take the hub's list of releases; queue those not yet handled (never waits for
        a download). A release refused by its signature is reported at once; an offer
        whose seal is refused, or older than one taken, is ignored as a whole."""
        async with self._offering:
            await self._offer(releases)

    async def _offer(self, releases: wire.ModelReleases) -> None:
        states = await self._loaded()
        try:
            key = await self._public_key()
        except (OSError, ValueError) as exc:
            logger.error("model releases not checked: no usable hub key: %s", exc)
            for signed in releases.releases:
                detail = f"the hub's signing key is unusable: {exc}"
                await self._refuse_unverified(states, signed.document, detail, final=False)
            return
        if not await self._in_order(states, key, releases):
            return
        # Each list is the whole of what the hub wants: a queued release it no longer
        # names is dropped, and so is the download of the one in progress (one a
        # download already brought is not activated: see `_deploy`).
        self._pending.clear()
        verified = []
        for signed in releases.releases:
            try:
                verified.append(release.verify(key, Signed(signed.document, signed.signature)))
            except release.ReleaseError as exc:
                await self._refuse_unverified(states, signed.document, str(exc))
        self._offered = {o.manifest.name: o for o in verified}
        current, fetching = self._current, self._fetching
        if current is not None and fetching is not None and not self._wanted_key(current):
            fetching.cancel()
        for offered in verified:
            m = offered.manifest
            triple = deploystate.key_of(m)
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

    async def _in_order(
        self, states: DeployStates, key: ed25519.Ed25519PublicKey, offer: wire.ModelReleases
    ) -> bool:
        """Whether to take this offer, by its seal (edge/offerorder.py); a number newer
        than the last taken is kept before the offer is acted on."""
        take, newer = offerorder.judge(offer, states, key, self._device_id)
        if newer:
            await self._save(states)  # before acting on it: a restart must not go back
        return take

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
                except ReleaseRefused as exc:
                    logger.warning("model %s %s refused: %s", m.name, m.version, exc)
                    await self._set(deploystate.record_of(m, "failed", str(exc), final=exc.final))
                except Exception as exc:  # one release's surprise must not stop the rest
                    logger.exception("model %s %s: deploy failed", m.name, m.version)
                    await self._set(
                        deploystate.record_of(m, "failed", f"{type(exc).__name__}: {exc}")
                    )
                finally:
                    self._current = None
                await self._requeue(m)
        finally:
            self._slots.on_rollback = None

    async def stage(self, name: str, version: str, sha256: str, data: bytes) -> None:
        """A release's model file carried by courier bundle (edge/courier.py), kept where
        a finished download would be (see `ReleaseFetcher.stage`)."""
        await self._fetcher.stage(name, version, sha256, data)

    def allowed_models_changed(self) -> None:
        """The policy allows other models now: the newest offer's releases it held back
        (`failed`, `final` false) are tried again at once, not at the next hello."""
        if self._offered is None or self._states is None:
            return
        allowed = self._service.allowed_models
        for name, offered in self._offered.items():
            key = deploystate.key_of(offered.manifest)
            if name in self._pending or key == self._current or (allowed and name not in allowed):
                continue
            record = self._states.find(key)
            if record is not None and record.state == "failed" and not record.final:
                self._pending[name] = offered
                self._wake.set()

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
            raise ReleaseRefused(
                f"{m.name} is not allowed by policy (allowed: {', '.join(sorted(allowed))})",
                final=False,  # a later policy may allow it: try again when offered again
            )
        installed = await asyncio.to_thread(self._installed, m)
        if not installed:
            await self._set(deploystate.record_of(m, "downloading"))
            part = await self._download(offered)
            await self._fetcher.install_downloaded(offered, part)
        if not self._wanted(m):  # the hub withdrew it while it came (a halted roll-out)
            raise ReleaseRefused("no longer offered by the hub: not activated", final=False)
        serving = self._slots.serving(m.name)
        if serving is not None and serving != m.version:
            # Kept before the swap: a crash between the swap and the "active" record must
            # not lose what it falls back to (after it, this version serves already).
            states = await self._loaded()
            states.put(deploystate.record_of(m, "downloading", previous=serving))
            await self._save(states)
        try:
            # What it replaced is what it falls back to: read at the swap, not before
            # the download (a roll-back may have happened meanwhile).
            before = await self._slots.activate(m.name, m.version)
        except (ModelFault, BundleError) as exc:
            if not installed:  # ours: a refused version must not load at the next start
                await asyncio.to_thread(self._remove, m)
            raise ReleaseRefused(f"not activated: {exc}") from exc
        previous = before if before is not None and before != m.version else ""
        if not previous and (kept := (await self._loaded()).find(deploystate.key_of(m))):
            previous = kept.previous  # swapped before a crash: what it replaced then
            if previous:
                self._slots.arm_rollback(m.name, m.version, previous)
        await self._set(deploystate.record_of(m, "active", previous=previous))
        logger.info("model %s %s active (release deployed)", m.name, m.version)
        # Older versions go, but the fallback, a shadow's candidate and the newest few.
        keep = {m.version, previous, self._service.shadows.versions().get(m.name, "")}
        gone = await asyncio.to_thread(self._directory.prune, m.name, keep)
        if gone:
            logger.info("model %s: versions %s removed (not needed)", m.name, ", ".join(gone))

    async def _download(self, offered: release.Release) -> Path:
        """The release's checked file; `ReleaseRefused` if an offer without it stopped
        the download (a partial file stays, to resume if it is offered again)."""
        fetch = asyncio.create_task(self._fetcher.download(offered), name="deploy.download")
        self._fetching = fetch
        try:
            return await fetch
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # the deployer itself stops
                raise
            raise ReleaseRefused(
                "no longer offered by the hub: its download stopped", final=False
            ) from None
        finally:
            self._fetching = None

    def _wanted(self, m: Manifest) -> bool:
        """Whether the newest offer taken still names this release."""
        return self._wanted_key(deploystate.key_of(m))

    def _wanted_key(self, key: Key) -> bool:
        if self._offered is None:
            return True
        offered = self._offered.get(key[0])
        return offered is not None and deploystate.key_of(offered.manifest) == key

    async def _requeue(self, done: Manifest) -> None:
        """After a deploy of `done`: if the newest offer names another release of its
        model that does not serve (it was skipped while the old one served, and the
        deploy then changed what serves), queue that one."""
        name = done.name
        offered = self._offered.get(name) if self._offered else None
        if (
            offered is None
            or name in self._pending
            or deploystate.key_of(offered.manifest) == deploystate.key_of(done)
        ):
            return
        states = await self._loaded()
        m = offered.manifest
        if states.decide(deploystate.key_of(m), self._slots.serving(name)) == "deploy":
            self._pending[name] = offered

    async def _shadow(self, offered: release.Release) -> None:
        """Install a candidate without activating it, and run it in shadow."""
        m = offered.manifest
        try:
            if not await asyncio.to_thread(self._installed, m):
                await self._fetcher.install(offered)
            await self._service.shadow(m.name, m.version)
        except Exception as exc:  # the live version is untouched; the hub sees no samples
            logger.warning("model %s %s not run in shadow: %s", m.name, m.version, exc)

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
        name, version = deploystate.claimed(document)
        logger.warning("model release %s %s refused: %s", name or "?", version or "?", detail)
        # Reported, not kept: an unverified document must not become the model's current
        # record (it could name any version). The retained list comes again on every
        # connect, and is refused again.
        await self._send(Record(name, version, "", "failed", detail, final))

    async def _set(self, record: Record) -> None:
        """Keep a release's new state on disk, then report it."""
        states = await self._loaded()
        states.put(record)
        await self._save(states)
        await self._send(record)

    async def _save(self, states: DeployStates) -> None:
        data = states.dump()
        async with self._saving:
            try:
                await asyncio.to_thread(deploystate.write, self._state_file, data)
            except OSError as exc:  # a full disk must not stop the roll-out; reported anyway
                logger.error("deploy states not saved: %s", exc)

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
            self._key = signing.load_public_pem(pem, str(self._paths.hub_signing_pub))
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
