"""The agent updating itself: take the release the hub names on `down/agent`, download
its files with the device's certificate (resumably), check every signature and hash,
install it beside the running version and switch to it (edge/selfupdate.py), then ask
to be restarted into it.

Only an agent installed side by side can do this: its interpreter is
PREFIX/releases/<version>/venv/bin/python, so PREFIX is found from it, and the
launcher (systemd/outpost-launch) that starts PREFIX/current is what rolls a version
that will not come up back. An agent run from anywhere else says so to the hub rather
than installing where nothing would start it.

What the hub hears, as a `model_state` report named `ROLLOUT_NAME`: `downloading` when
it starts, `failed` (with why) when the release is refused or will not install, and
nothing once switched: the hello of the new version, naming its version, is the word
that it came up. A version that does not come up is reported `rolled_back` by the
version the launcher went back to (edge/agent.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from edge import download, selfupdate
from edge.identity import DevicePaths
from outpost import __version__, agentrelease, backoff, files, signing, tls, wire
from outpost.agentrelease import ROLLOUT_NAME, AgentManifest, ReleaseFileError
from outpost.signing import Signed

logger = logging.getLogger(__name__)

Report = Callable[[wire.ModelState], Awaitable[None]]
DOWNLOADS = "agent-update"  # in the data folder: <version>/{release.signed, files/}
RETRY_CAP_S = 300.0
# The exit status that asks the launcher to start PREFIX/current again at once.
EXIT_RESTART = 75
# Written by the launcher when it went back from a version that would not come up; the
# agent renames it once it reported it (edge/agent.py).
ROLLED_BACK = "rolled-back.json"
ROLLED_BACK_REPORTED = "rolled-back.reported.json"
# Versions refused for good (a bad signature, a file that does not match, not for this
# machine), kept across restarts: the broker's retained offer may name one long after,
# and each start downloaded and refused it again. The newest ones, at most this many.
REFUSED = "agent-refused.json"
MAX_REFUSED_KEPT = 32


class RestartRequested(Exception):
    """PREFIX/current names a newer version: stop cleanly and exit EXIT_RESTART."""

    def __init__(self, version: str) -> None:
        super().__init__(f"switched to agent {version}: restart into it")
        self.version = version


class _Refused(Exception):
    """This release will not be installed; the message says why. `kept`: remembered
    across restarts (the release's own fault), or only until the next start."""

    def __init__(self, message: str, *, kept: bool = True) -> None:
        super().__init__(message)
        self.kept = kept


class _Withdrawn(Exception):
    """The hub no longer names the release being installed; the message says so."""


def side_by_side_prefix(python_prefix: str = sys.prefix) -> Path | None:
    """PREFIX when this interpreter is PREFIX/releases/<version>/venv; else None."""
    venv = Path(python_prefix)
    if venv.name == "venv" and venv.parent.parent.name == "releases":
        return venv.parent.parent.parent
    return None


class AgentUpdater:
    """Installs the agent release the hub names, one at a time."""

    def __init__(
        self,
        paths: DevicePaths,
        hub_url: str,
        report: Report,
        *,
        prefix: Path | None,
        running: str = __version__,
        machine: str | None = None,
        retry_cap: float = RETRY_CAP_S,
    ) -> None:
        self._paths = paths
        self._hub_url = hub_url.rstrip("/")
        self._report = report
        self._prefix = prefix
        self._running = running
        self._machine = machine or platform.machine()
        self._retry_cap = retry_cap
        self._downloads = paths.root / DOWNLOADS
        self._pending: tuple[Signed, AgentManifest] | None = None
        self._refused: set[str] = set()  # versions refused for good: not tried again
        self._states: dict[str, wire.ModelState] = {}  # by version: what went wrong
        self._wake = asyncio.Event()
        # The version the hub's newest offer names (None: none): an update under way
        # that it no longer names (a halted roll-out) is not switched to.
        self._wanted: str | None = None

    async def load(self) -> None:
        """Learn from the launcher which version it rolled back from, if it did: that one
        is reported after every hello and refused for good, kept with the refusals as
        the next rollback's report replaces its file (the hub's retained offer may still
        name it when this version connects); and which versions were refused before."""
        self._refused.update(await asyncio.to_thread(_read_refused, self._paths.root / REFUSED))
        for name in (ROLLED_BACK, ROLLED_BACK_REPORTED):
            try:
                raw = await asyncio.to_thread((self._paths.root / name).read_text)
                report = json.loads(raw)
                bad, reason = str(report["from"]), str(report.get("reason", ""))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            # Kept with the refusals: the next rollback's report is renamed over this
            # one, and this version must stay refused all the same.
            if bad not in self._refused:
                await self._refuse_for_good(bad)
            detail = f"did not come up ({reason}); {self._running} runs again"
            self._states[bad] = wire.ModelState(ROLLOUT_NAME, bad, "rolled_back", detail[-512:])

    def states(self) -> list[wire.ModelState]:
        """The reports the hub must hear again after each hello (the failed ones)."""
        return list(self._states.values())

    async def offer(self, body: wire.AgentOffer) -> None:
        """Take the hub's word on which agent to run (never waits for a download)."""
        if body.release is None:
            self._pending = None  # the hub no longer names one (a halted roll-out)
            self._wanted = None
            return
        signed = Signed(body.release.document, body.release.signature)
        try:
            key = await asyncio.to_thread(_hub_key, self._paths)
            manifest, _ = agentrelease.verify(key, signed)
        except (OSError, ValueError) as exc:  # ReleaseFileError is a ValueError
            logger.warning("agent release refused: %s", exc)
            await self._send("?", "failed", f"refused: {exc}")
            return
        version = manifest.version
        self._wanted = version
        if selfupdate.version_key(version) <= selfupdate.version_key(self._running):
            return  # what runs is as new (its hello says so): nothing to do
        if version in self._refused:
            await self._send(version, "failed", "refused before; the hub must name another")
            return
        self._pending = (signed, manifest)
        self._wake.set()

    async def run(self) -> None:
        """Install what is offered, until cancelled; `RestartRequested` once switched."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, None
            if pending is None:
                continue
            signed, manifest = pending
            if manifest.version in self._refused:  # offered again while it was tried
                continue
            try:
                await self._update(signed, manifest)
            except _Refused as exc:
                if exc.kept:
                    await self._refuse_for_good(manifest.version)
                else:
                    self._refused.add(manifest.version)  # until a restart
                logger.error("agent %s not installed: %s", manifest.version, exc)
                await self._send(manifest.version, "failed", str(exc))
                continue
            except _Withdrawn as exc:  # a halted roll-out: not this release's fault
                logger.warning("agent %s not switched to: %s", manifest.version, exc)
                await self._send(manifest.version, "failed", str(exc), final=False)
                continue
            except (OSError, download.DiskFull, selfupdate.DeviceError) as exc:
                # The device (its disk full, a step timed out), not the release: said, and
                # tried again when the hub offers it again, not the end of the agent.
                said = str(exc).removeprefix("not installed: ")
                logger.error("agent %s not installed: %s", manifest.version, said)
                await self._send(manifest.version, "failed", f"not installed: {said}", final=False)
                continue
            logger.warning("agent %s installed and switched to: restarting", manifest.version)
            raise RestartRequested(manifest.version)

    async def _refuse_for_good(self, version: str) -> None:
        self._refused.add(version)
        path = self._paths.root / REFUSED
        try:
            before = await asyncio.to_thread(_read_refused, path)
            kept = [*(v for v in before if v != version), version][-MAX_REFUSED_KEPT:]
            await asyncio.to_thread(files.replace, path, json.dumps(kept).encode())
        except OSError as exc:  # a full disk: refused in memory still, until a restart
            logger.warning("could not keep agent %s as refused: %s", version, exc)

    async def _update(self, signed: Signed, manifest: AgentManifest) -> None:
        version = manifest.version
        if self._prefix is None:  # this agent's way of running, not the release's fault
            raise _Refused(
                f"this agent runs from {sys.prefix}, not PREFIX/releases/<version>/venv: "
                "it was not installed side by side (scripts/install-agent.sh does), so it "
                "cannot update itself; update it by hand",
                kept=False,
            )
        if self._machine not in manifest.platforms:
            raise _Refused(
                f"release {version} is for {', '.join(manifest.platforms)}, not this "
                f"device's {self._machine}"
            )
        await self._send(version, "downloading", "")
        folder = self._downloads / version
        await asyncio.to_thread(_prepare, self._downloads, folder, signed)
        for entry in manifest.for_platform(self._machine):
            await self._fetch(version, entry, folder / agentrelease.FILES)
        key = await asyncio.to_thread(_hub_key, self._paths)
        try:
            # Checks everything again, from the files on disk: the signature, the
            # versions (newer, may update from this one), every file's size and sha256.
            checked = await asyncio.to_thread(
                selfupdate.check_release, folder, key, running=self._running, machine=self._machine
            )
            self._check_wanted(version)
            await asyncio.to_thread(
                selfupdate.install, folder, checked, prefix=self._prefix, data=self._paths.root
            )
            self._check_wanted(version)
            await asyncio.to_thread(selfupdate.switch, self._prefix, version)
        except selfupdate.DeviceError:
            raise  # the device's, not the release's: tried again (run)
        except selfupdate.InstallError as exc:
            raise _Refused(str(exc)) from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)

    def _check_wanted(self, version: str) -> None:
        """`_Withdrawn` if the hub's newest offer no longer names `version`."""
        if self._wanted != version:
            raise _Withdrawn(f"no longer offered by the hub (it names {self._wanted or 'none'})")

    async def _fetch(self, version: str, entry: agentrelease.AgentFile, files: Path) -> None:
        """One file of the release, whole and matching the manifest, in `files`."""
        target = files / entry.name
        if await asyncio.to_thread(_matches, target, entry):
            return
        part = target.with_name(target.name + ".part")
        url = f"{self._hub_url}/api/v1/device/agent-releases/{version}/{entry.name}"
        attempt = 0
        while True:
            try:
                # Built per attempt: the certificate may have been renewed meanwhile.
                context = await asyncio.to_thread(
                    tls.client_context, self._paths.ca_cert, self._paths.cert, self._paths.key
                )
                resumed = await download.fetch(url, part, entry.size, context)
                await asyncio.to_thread(part.replace, target)
                if await asyncio.to_thread(_matches, target, entry):
                    return
                await asyncio.to_thread(target.unlink, True)
                if not resumed:
                    raise _Refused(f"{entry.name}: the download does not match the manifest")
                # Pieces of several responses: one clean download before calling it wrong.
                logger.warning("agent %s: resumed %s does not match; again", version, entry.name)
            except download.DownloadRefused as exc:
                await asyncio.to_thread(part.unlink, True)
                raise _Refused(f"the hub refused {entry.name}: {exc}") from exc
            except download.WrongSize as exc:
                await asyncio.to_thread(part.unlink, True)
                raise _Refused(f"{entry.name}: not the file the manifest names: {exc}") from exc
            except (download.DownloadError, OSError) as exc:
                wait = backoff.delay(attempt, cap=self._retry_cap)
                attempt += 1
                logger.warning(
                    "agent %s: %s download failed (%s); retry %d in %.1f s",
                    version, entry.name, exc, attempt, wait,
                )  # fmt: skip
                await asyncio.sleep(wait)

    async def _send(
        self, version: str, state: wire.DeployState, detail: str, *, final: bool = True
    ) -> None:
        report = wire.ModelState(ROLLOUT_NAME, version, state, detail[-512:], final)
        if state == "failed" and final and version != "?":
            self._states[version] = report
        try:
            await self._report(report)
        except Exception:  # best effort: a refused release is refused again on its next offer
            logger.exception("agent update state %s %s not reported", version, state)


def _read_refused(path: Path) -> list[str]:
    """The versions refused for good, oldest first ([] if none or unreadable)."""
    try:
        kept = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:  # damaged: they are refused again when offered
        logger.warning(
            "%s cannot be read (%s): agent versions refused before are forgotten", path, exc
        )
        return []
    return [v for v in kept if isinstance(v, str)] if isinstance(kept, list) else []


def _hub_key(paths: DevicePaths) -> ed25519.Ed25519PublicKey:
    return signing.load_public_pem(paths.hub_signing_pub.read_bytes(), str(paths.hub_signing_pub))


def _prepare(downloads: Path, folder: Path, signed: Signed) -> None:
    """The release's folder, with its signed manifest; other versions' folders go (one
    update at a time: a newer offer replaces an older one's partial files)."""
    if downloads.is_dir():
        for other in downloads.iterdir():
            if other != folder:
                shutil.rmtree(other, ignore_errors=True)
    (folder / agentrelease.FILES).mkdir(parents=True, exist_ok=True, mode=0o700)
    agentrelease.write_signed(folder, signed)


def _matches(path: Path, entry: agentrelease.AgentFile) -> bool:
    if not path.is_file():
        return False
    try:
        agentrelease.check_file(path, entry)
    except ReleaseFileError:
        return False
    return True
