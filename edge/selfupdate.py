"""Installing an agent release side by side with the running one (issue 22, first part).

Runs from the *running* version's code (never the new one's): a release the device
received (`release.signed`, the hub-signed manifest, and `files/`, its wheels) is
checked and installed under PREFIX/releases/<version>/venv, the new version's own
`outpost-agent selfcheck` is run against the data folder, and only then does
PREFIX/current (a symlink) move to it, atomically; PREFIX/previous keeps what it
pointed at, for `roll_back`. The running version is never touched: a failure at any
step (a refused file, pip, a full disk, the selfcheck) removes the half-made folder and
says why: `DiskError` when the device's disk was at fault, which a later try may get
past, else `InstallError`.

    layout: PREFIX/releases/<version>/venv, PREFIX/current -> releases/<version>

Only the versions `current` and `previous` name are kept: a switch removes the others.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from packaging.version import InvalidVersion, Version

from outpost import agentrelease, files
from outpost.agentrelease import AgentManifest, ReleaseFileError

COMPLETE = ".complete"  # written last into a release folder: it was installed whole
PIP_TIMEOUT_S = 1800.0


class InstallError(RuntimeError):
    """The release was not installed; the message says why. The running one is as it was."""


class DeviceError(InstallError):
    """The device stopped the install, not the release (a step that timed out on a busy
    board, or was killed, say for want of memory): it may install later, so it is not
    refused for good."""


class DiskError(DeviceError):
    """The device's disk (full, failing) stopped the install, not the release: it may
    install once there is room, so it is not refused for good."""


# What pip, the venv module and the selfcheck print when they meet a full disk: ENOSPC
# (errno 28) from the kernel, SQLITE_FULL from the store's copy the selfcheck migrates.
DISK_FULL_SAID = ("[Errno 28]", "No space left on device", "database or disk is full")


@dataclass(frozen=True)
class Installed:
    version: str
    folder: Path
    previous: str | None  # the version `current` pointed at before


def check_release(
    release: Path,
    hub_key: ed25519.Ed25519PublicKey,
    *,
    running: str,
    machine: str | None = None,
) -> AgentManifest:
    """The release's manifest once its signature, platform, versions and every file this
    device installs check out; `InstallError` naming the first that does not."""
    machine = machine or platform.machine()
    try:
        manifest, _ = agentrelease.verify(hub_key, agentrelease.read_signed(release))
    except ReleaseFileError as exc:
        raise InstallError(f"refused: {exc}") from exc
    if machine not in manifest.platforms:
        raise InstallError(
            f"refused: release {manifest.version} is for {', '.join(manifest.platforms)}, "
            f"not this device's {machine}"
        )
    if version_key(manifest.version) <= version_key(running):
        raise InstallError(
            f"refused: release {manifest.version} is not newer than the running {running}"
        )
    if version_key(running) < version_key(manifest.min_agent_version):
        raise InstallError(
            f"refused: release {manifest.version} updates agents from "
            f"{manifest.min_agent_version} on; this one is {running}"
        )
    for entry in manifest.for_platform(machine):
        try:
            agentrelease.check_file(release / agentrelease.FILES / entry.name, entry)
        except ReleaseFileError as exc:
            raise InstallError(f"refused: {exc}") from exc
    return manifest


def install(
    release: Path,
    manifest: AgentManifest,
    *,
    prefix: Path,
    data: Path,
    python: str = sys.executable,
) -> Path:
    """Install a checked release into PREFIX/releases/<version> and run its selfcheck on
    `data`; the folder, or `InstallError` (and no folder)."""
    folder = prefix / "releases" / manifest.version
    if (folder / COMPLETE).exists():
        return folder  # installed before (an update interrupted after this step)
    shutil.rmtree(folder, ignore_errors=True)  # a half-made one from an earlier try
    try:
        folder.mkdir(parents=True)
        venv = folder / "venv"
        new_python = str(venv / "bin" / "python")
        wanted = [f"outpost=={manifest.version}"]
        options = ["install", "--no-index", "--no-cache-dir", "--disable-pip-version-check",
                   "-q", "--find-links", str(release / agentrelease.FILES)]  # fmt: skip
        # The venv is made where it stays: its scripts name their interpreter by path.
        if _ships_pip(manifest) and _can_install_elsewhere(python):
            # Without ensurepip, which unpacks a copy of pip of its own (over a third of
            # an install's time): the running version's pip installs into the new venv,
            # pip's wheel from the release with the rest, so that the new version can
            # install the next one the same way.
            _step([python, "-m", "venv", "--without-pip", str(venv)], "making its venv")
            pip = [python, "-m", "pip", "--python", new_python]
            wanted.append("pip")
        else:  # a release built without pip's wheel, or a pip too old for --python
            _step([python, "-m", "venv", str(venv)], "making its venv")
            pip = [new_python, "-m", "pip"]
        _step([*pip, *options, *wanted], "installing its wheels (no package index)")
        _step(
            [str(venv / "bin" / "outpost-agent"), "selfcheck", "--data", str(data)],
            "the new version's selfcheck",
        )
        # On the disk before it is called whole: a power cut after the switch must not
        # leave `current` naming empty files (the launcher could not even start them).
        os.sync()
        files.replace(folder / COMPLETE, (manifest.version + "\n").encode(), files.PUBLIC)
    except (InstallError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, say
            raise DiskError(f"not installed: {exc.strerror or exc}") from exc
        raise
    return folder


def switch(prefix: Path, version: str) -> Installed:
    """Point PREFIX/current at the installed `version`, atomically; keep the old target
    as PREFIX/previous."""
    folder = prefix / "releases" / version
    if not (folder / COMPLETE).exists():
        raise InstallError(f"release {version} is not installed whole in {folder}")
    current = prefix / "current"
    before = _target(current)
    if before is not None:
        _link(prefix / "previous", before)
    _link(current, Path("releases") / version)
    # Only what the launcher may start stays: this version and the one it falls back to.
    # Each release is a whole venv (tens of MB): kept, they would fill a small device's
    # card one update at a time.
    prune(prefix, keep={version} | ({before.name} if before is not None else set()))
    return Installed(version, folder, before.name if before is not None else None)


def prune(prefix: Path, keep: set[str]) -> list[str]:
    """Remove every release folder in PREFIX/releases but those of `keep` (half-made ones
    too); the versions removed. A folder that cannot be removed is left, and tried again
    at the next update."""
    releases = prefix / "releases"
    removed = []
    for folder in sorted(releases.iterdir()) if releases.is_dir() else []:
        if folder.name in keep or not folder.is_dir() or folder.is_symlink():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder.name)
    return removed


def roll_back(prefix: Path) -> str:
    """Point PREFIX/current back at PREFIX/previous; the version now current."""
    previous = _target(prefix / "previous")
    if previous is None:
        raise InstallError(f"no previous version to go back to in {prefix}")
    failed = _target(prefix / "current")
    _link(prefix / "current", previous)
    if failed is not None:
        _link(prefix / "previous", failed)
    return previous.name


def _target(link: Path) -> Path | None:
    return Path(os.readlink(link)) if link.is_symlink() else None


def _link(link: Path, target: Path) -> None:
    staging = link.with_name(link.name + ".new")
    staging.unlink(missing_ok=True)
    staging.symlink_to(target)
    os.replace(staging, link)  # atomic: the link is the old or the new, never neither
    files.sync_dir(link.parent)


def _ships_pip(manifest: AgentManifest) -> bool:
    return any(entry.name.startswith("pip-") for entry in manifest.files)


def _can_install_elsewhere(python: str) -> bool:
    """Whether `python` has a pip that installs into another interpreter's environment
    (`pip --python`, pip 22.3 and later)."""
    try:
        said = subprocess.run(
            [python, "-c", "import pip; print(pip.__version__)"],
            capture_output=True, text=True, timeout=60, check=False, env=_own_env(),
        )  # fmt: skip
        return said.returncode == 0 and Version(said.stdout.strip()) >= Version("22.3")
    except (OSError, subprocess.TimeoutExpired, InvalidVersion):
        return False


def _own_env() -> dict[str, str]:
    """The environment of a step: each interpreter's own code, whatever PYTHONPATH the
    running agent was given."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _step(argv: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False, env=_own_env()
        )
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"not installed: {what} took over {PIP_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip()[-2000:]
        failed: type[InstallError] = InstallError
        if any(s in said for s in DISK_FULL_SAID):
            failed = DiskError
        elif done.returncode < 0:  # killed by a signal (the kernel's OOM killer, say)
            failed = DeviceError
        raise failed(f"not installed: {what} failed (status {done.returncode}):\n{said}")


def version_key(version: str) -> Version:
    """A version, for ordering as pip does (`outpost.agentrelease.version_order`)."""
    return agentrelease.version_order(version)
