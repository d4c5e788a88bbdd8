"""The agent's side of model roll-out: install and activate the releases the hub names.

The hub publishes, retained on `down/models`, the signed release of each model the device
should run. For each release not yet handled the deployer, one at a time: checks the
signature and the policy, downloads the model file (resuming after a lost connection),
checks it against the signed manifest, installs it beside the serving version, and asks
the inference service to load, self-test and swap it in. Every step that can refuse
leaves the previous version serving. What became of each release is reported (and kept
on disk, see `deploystate.py`); a version that then fails in use is rolled back by the
inference service and reported `rolled_back`. The download and install, file work that
knows nothing of states, are in `deployfetch.py`; the keeping and reporting of states in
`deployrecord.py`.

A shadow candidate (run beside the live version, never serving) is brought in the same
worker, when no live release waits: its download gives way to a live release queued
meanwhile (to resume later), and stops when the hub no longer names it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge import deploystate, offerorder
from edge.deployfetch import RETRY_CAP_S, ReleaseFetcher, ReleaseRefused, Withdrawn
from edge.deployrecord import Recorder, Report
from edge.deploystate import DeployStates, Key, Record
from edge.identity import DevicePaths
from edge.inference.service import InferenceService
from outpost import release, signing, wire
from outpost.modelbundle import BundleError, Manifest
from outpost.signing import Signed

logger = logging.getLogger(__name__)

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
        self._fetcher = ReleaseFetcher(
            paths, hub_url.rstrip("/"), service.directory, retry_cap=retry_cap
        )
        self._recorder = Recorder(self._directory.root / STATE_FILE, report)
        self._offering = asyncio.Lock()  # offers taken one at a time, in the order they came
        self._key: ed25519.Ed25519PublicKey | None = None
        self._pending: dict[str, release.Release] = {}  # by model name: the newest offer wins
        self._shadow_pending: dict[str, release.Release] = {}  # candidates to shadow, by name
        self._current: Key | None = None
        # The releases of the newest offer taken, by model name (None: none taken yet):
        # what is still wanted when a download ends.
        self._offered: dict[str, release.Release] | None = None
        # The same for the shadow candidates (None: no offer taken yet).
        self._shadows_offered: dict[str, release.Release] | None = None
        self._shadowing: Key | None = None  # the candidate the worker brings in
        self._fetching: asyncio.Task[Path] | None = None  # the download under way, if any
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ public

    async def offer(self, releases: wire.ModelReleases) -> None:
        """Take the hub's list of releases; queue those not yet handled (never waits for
        a download). A release refused by its signature is reported at once; an offer
        whose seal is refused, or older than one taken, is ignored as a whole."""
        async with self._offering:
            await self._offer(releases)

    async def _offer(self, releases: wire.ModelReleases) -> None:
        states = await self._recorder.loaded()
        try:
            key = await self._public_key()
        except (OSError, ValueError) as exc:
            logger.error("model releases not checked: no usable hub key: %s", exc)
            for signed in releases.releases:
                detail = f"the hub's signing key is unusable: {exc}"
                await self._recorder.refuse_unverified(signed.document, detail, final=False)
            return
        if not await self._in_order(states, key, releases):
            return
        # Each list is the whole of what the hub wants: a queued release it no longer
        # names is dropped, and so is the download of the one in progress (one a
        # download already brought is not activated: see `_deploy`), at the end.
        self._pending.clear()
        verified = []
        for signed in releases.releases:
            try:
                verified.append(release.verify(key, Signed(signed.document, signed.signature)))
            except release.ReleaseError as exc:
                await self._recorder.refuse_unverified(signed.document, str(exc))
        self._offered = {o.manifest.name: o for o in verified}
        for offered in verified:
            m = offered.manifest
            triple = deploystate.key_of(m)
            # In the worker's hands, it reports how it ends; once it serves, the worker
            # only prunes older versions, and the offer is answered as a later one.
            if triple == self._current and not states.serves(triple, self._slots.serving(m.name)):
                continue
            action = await self._decide(states, triple)
            if action == "deploy":
                self._pending[m.name] = offered
                self._wake.set()
            elif action == "mark_rolled_back":
                await self._mark_rolled_back(triple)
            elif action == "report" and (record := states.find(triple)) is not None:
                await self._recorder.send(record)  # refused before: the hub must issue anew
            elif (record := states.find(triple)) is not None:
                # Already active: say so again, a roll-out of this version (say back to
                # it after a halted one) waits on the word.
                await self._recorder.send(record)
        await self._offer_shadows(key, releases.shadows)
        self._stop_if_unwanted()

    async def _in_order(
        self, states: DeployStates, key: ed25519.Ed25519PublicKey, offer: wire.ModelReleases
    ) -> bool:
        """Whether to take this offer, by its seal (edge/offerorder.py); a number newer
        than the last taken is kept before the offer is acted on."""
        take, newer = offerorder.judge(offer, states, key, self._device_id)
        if newer:
            await self._recorder.save()  # before acting on it: a restart must not go back
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
        self._shadows_offered = wanted
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

    def _unwanted(self) -> bool:
        """Whether the download under way (or about to start) is to stop: the newest
        offer no longer names its release, or, a shadow candidate's, a live release
        waits (a halt back to the old version must not wait on a hub that cannot serve
        the candidate). Its partial file stays, to resume later."""
        if self._shadowing is not None:
            return bool(self._pending) or not self._shadow_wanted(self._shadowing)
        return self._current is not None and not self._wanted_key(self._current)

    def _stop_if_unwanted(self) -> None:
        if self._fetching is not None and self._unwanted():
            self._fetching.cancel()

    async def run(self) -> None:
        """Deploy queued releases one at a time, until cancelled."""
        states = await self._recorder.loaded()
        for record in states.latest():
            if await self._decide(states, record.key) == "mark_rolled_back":
                await self._mark_rolled_back(record.key)
            elif record.state == "active" and record.previous:
                self._slots.arm_rollback(record.name, record.version, record.previous)
        self._slots.on_rollback = self._recorder.rolled_back
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
        if self._offered is None or (states := self._recorder.states) is None:
            return
        allowed = self._service.allowed_models
        for name, offered in self._offered.items():
            key = deploystate.key_of(offered.manifest)
            if name in self._pending or key == self._current or (allowed and name not in allowed):
                continue
            record = states.find(key)
            if record is not None and record.state == "failed" and not record.final:
                self._pending[name] = offered
                self._wake.set()
        self._stop_if_unwanted()

    def queued(self) -> list[tuple[str, str]]:
        """(name, version) of each release waiting its turn, in order."""
        return [(r.name, r.version) for r in self._pending.values()]

    def states(self) -> list[wire.ModelState]:
        """The current state of each model's latest release (sent again after hello)."""
        states = self._recorder.states
        return [r.message() for r in states.latest()] if states else []

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
        installed = await self._fetcher.installed(m)
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
            states = await self._recorder.loaded()
            states.put(deploystate.record_of(m, "downloading", previous=serving))
            await self._recorder.save()
        try:
            # What it replaced is what it falls back to: read at the swap, not before
            # the download (a roll-back may have happened meanwhile).
            before = await self._slots.activate(m.name, m.version)
        except (ModelFault, BundleError) as exc:
            if not installed:  # ours: a refused version must not load at the next start
                await self._fetcher.remove(m)
            # The local copy's fault (it went bad since it was checked), not the
            # release's: the next offer checks it again, and downloads it if need be.
            damaged = isinstance(exc, BundleError) or isinstance(exc.__cause__, BundleError)
            raise ReleaseRefused(f"not activated: {exc}", final=not damaged) from exc
        previous = before if before is not None and before != m.version else ""
        if not previous and (kept := (await self._recorder.loaded()).find(deploystate.key_of(m))):
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
        """The release's checked file; `Withdrawn` if the download was stopped (a partial
        file stays, to resume if it is wanted again)."""
        if self._unwanted():  # stopped before it started (an offer came meanwhile)
            raise Withdrawn()
        fetch = asyncio.create_task(
            self._fetcher.download(offered, self._all_wanted()), name="deploy.download"
        )
        self._fetching = fetch
        try:
            return await fetch
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # the deployer itself stops
                raise
            raise Withdrawn() from None
        finally:
            self._fetching = None

    def _all_wanted(self) -> list[Manifest]:
        """Every release the newest offer names, live or shadow (their partials stay)."""
        named = [*(self._offered or {}).values(), *(self._shadows_offered or {}).values()]
        return [o.manifest for o in named]

    def _wanted(self, m: Manifest) -> bool:
        """Whether the newest offer taken still names this release."""
        return self._wanted_key(deploystate.key_of(m))

    def _wanted_key(self, key: Key) -> bool:
        return deploystate.names(self._offered, key)

    def _shadow_wanted(self, key: Key) -> bool:
        """Whether the newest offer taken still names this shadow candidate."""
        return deploystate.names(self._shadows_offered, key)

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
        states = await self._recorder.loaded()
        m = offered.manifest
        if await self._decide(states, deploystate.key_of(m)) == "deploy":
            self._pending[name] = offered

    async def _shadow(self, offered: release.Release) -> None:
        """Install a candidate without activating it, and run it in shadow."""
        m = offered.manifest
        key = self._shadowing = deploystate.key_of(m)
        try:
            if not await self._fetcher.installed(m):
                part = await self._download(offered)
                await self._fetcher.install_downloaded(offered, part)
            # The hub may have stopped the shadow roll-out while it came, or while it
            # loads: then it must not start, nor stay.
            if self._shadow_wanted(key):
                await self._service.shadow(m.name, m.version)
            shadows = self._service.shadows
            if not self._shadow_wanted(key) and shadows.candidate(m.name) == m.version:
                await shadows.drop(m.name)
        except Withdrawn:
            if self._shadow_wanted(key):  # it gave way to a live release: its turn comes again
                logger.info("model %s %s: shadow download set aside", m.name, m.version)
                self._shadow_pending.setdefault(m.name, offered)
        except Exception as exc:  # the live version is untouched; the hub sees no samples
            logger.warning("model %s %s not run in shadow: %s", m.name, m.version, exc)
        finally:
            self._shadowing = None

    # ------------------------------------------------------------- bookkeeping

    async def _decide(self, states: DeployStates, key: Key) -> deploystate.Action:
        """What to do with a release, by what serves and the directory's word of a
        roll-back (edge/inference/directory.py)."""
        rolled_back = await asyncio.to_thread(self._directory.rolled_back, key[0])
        return states.decide(key, self._slots.serving(key[0]), rolled_back=rolled_back)

    async def _mark_rolled_back(self, key: Key) -> None:
        """Record a roll-back found done (the model directory says so) whose own record
        was lost: killed before it was kept, or unheard."""
        record = (await self._recorder.loaded()).find(key)
        if record is not None:
            detail = f"found rolled back to {record.previous}; the reason was not kept"
            await self._set(replace(record, state="rolled_back", detail=detail, final=True))

    async def _set(self, record: Record) -> None:
        """Keep a release's new state on disk, then report it."""
        await self._recorder.set(record)

    async def _public_key(self) -> ed25519.Ed25519PublicKey:
        if self._key is None:
            pem = await asyncio.to_thread(self._paths.hub_signing_pub.read_bytes)
            self._key = signing.load_public_pem(pem, str(self._paths.hub_signing_pub))
        return self._key
