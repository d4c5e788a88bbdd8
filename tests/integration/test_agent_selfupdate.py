"""An agent release installed side by side (issue 22, first part): a release of this
checkout under a bumped version, with every dependency wheel for this machine, taken
and signed by a hub, is checked, installed with no package index into
PREFIX/releases/<version>, self-checked against a device's data folder, and switched to
atomically; back again with `roll_back`. Refused: a changed file, another key's
signature, another platform, a version not newer, an agent too old to update from; and
a release whose selfcheck fails is removed, leaving `current` as it was."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge import selfupdate
from edge.selfupdate import InstallError
from edge.store.recovery import open_store
from hub.fleet.agentreleases import AgentShelf
from hub.fleet.enrollment import load_signing_key
from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import HubStore
from outpost import __version__, agentrelease
from tests import agent_releases, disks
from tests.conftest import Enroller

NEW = "0.99.0"
MACHINE = platform.machine()


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HubPaths]:
    """The release as a device receives it from a hub, and that hub's folder."""
    root = tmp_path_factory.mktemp("selfupdate")
    built = agent_releases.of_this_checkout(tmp_path_factory, root / "built", NEW)
    hub = HubPaths(root / "hub")
    initialise(hub, server_names=[])

    async def take() -> None:
        store = HubStore(hub.database)
        try:
            shelf = AgentShelf(hub, store, load_signing_key(hub))
            await shelf.accept(built, by="test")
            await shelf.package(NEW, root / "received")
        finally:
            store.close()

    asyncio.run(take())
    return root / "received", hub


def hub_key(hub: HubPaths) -> ed25519.Ed25519PublicKey:
    key = serialization.load_pem_public_key(hub.signing_pub.read_bytes())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    return key


async def data_folder(enroll_device: Enroller) -> Path:
    paths, _ = await enroll_device()
    open_store(paths.store).db.conn.close()
    return paths.root


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_release_is_installed_beside_the_running_one_and_switched_to(
    received: tuple[Path, HubPaths], enroll_device: Enroller, tmp_path: Path
) -> None:
    release, hub = received
    data = await data_folder(enroll_device)
    prefix = tmp_path / "opt-outpost"
    (prefix / "releases" / __version__).mkdir(parents=True)  # the running one
    (prefix / "releases" / __version__ / selfupdate.COMPLETE).write_text(__version__)
    (prefix / "current").symlink_to(Path("releases") / __version__)

    manifest = selfupdate.check_release(release, hub_key(hub), running=__version__)
    folder = await asyncio.to_thread(
        selfupdate.install, release, manifest, prefix=prefix, data=data
    )
    assert os.readlink(prefix / "current") == f"releases/{__version__}"  # not yet
    installed = selfupdate.switch(prefix, NEW)

    assert installed.previous == __version__
    assert os.readlink(prefix / "current") == f"releases/{NEW}"
    assert os.readlink(prefix / "previous") == f"releases/{__version__}"
    version = subprocess.run(
        [str(prefix / "current" / "venv" / "bin" / "outpost-agent"), "--version"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert version.stdout.strip() == f"outpost-agent {NEW}"
    assert folder == prefix / "releases" / NEW
    # Made without ensurepip: its pip is the release's, for installing the next one.
    assert _pip_of(folder) == _shipped_pip(manifest)

    assert selfupdate.roll_back(prefix) == __version__
    assert os.readlink(prefix / "current") == f"releases/{__version__}"
    assert os.readlink(prefix / "previous") == f"releases/{NEW}"


def test_only_a_pip_that_installs_elsewhere_skips_ensurepip(tmp_path: Path) -> None:
    """The running version's pip installs the new venv's wheels only if it can (pip
    22.3 and later, `--python`); an interpreter without pip makes its venv as before."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
    )
    assert selfupdate._can_install_elsewhere(sys.executable)
    assert not selfupdate._can_install_elsewhere(str(tmp_path / "bare" / "bin" / "python"))
    assert not selfupdate._can_install_elsewhere(str(tmp_path / "no-such-python"))


def _pip_of(folder: Path) -> str:
    said = subprocess.run(
        [str(folder / "venv" / "bin" / "python"), "-c", "import pip; print(pip.__version__)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return said.stdout.strip()


def _shipped_pip(manifest: agentrelease.AgentManifest) -> str:
    (wheel,) = [e.name for e in manifest.files if e.name.startswith("pip-")]
    return wheel.split("-")[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_release_whose_selfcheck_fails_is_removed(
    received: tuple[Path, HubPaths],
    enroll_device: Enroller,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Installed as a release built before pip's wheel was shipped is (its venv made
    with ensurepip, whose pip installs the wheels), which the selfcheck's run proves
    whole; the selfcheck refuses, and the folder goes."""
    release, hub = received
    data = await data_folder(enroll_device)
    with contextlib.closing(sqlite3.connect(data / "store.db")) as db, db:
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES ('999_future', 0)")
    prefix = tmp_path / "opt-outpost"
    manifest = selfupdate.check_release(release, hub_key(hub), running=__version__)
    without_pip = msgspec.structs.replace(
        manifest, files=[e for e in manifest.files if not e.name.startswith("pip-")]
    )
    assert without_pip.files != manifest.files
    steps: list[list[str]] = []
    real_step = selfupdate._step

    def step(argv: list[str], what: str) -> None:
        steps.append(argv)
        real_step(argv, what)

    monkeypatch.setattr(selfupdate, "_step", step)

    with pytest.raises(InstallError, match="the new version's selfcheck failed") as failed:
        await asyncio.to_thread(selfupdate.install, release, without_pip, prefix=prefix, data=data)

    assert "migrated by a newer agent (999_future)" in str(failed.value)
    assert not (prefix / "releases" / NEW).exists()
    assert not (prefix / "current").exists()
    venv = str(prefix / "releases" / NEW / "venv")
    assert steps[0][1:] == ["-m", "venv", venv]  # with ensurepip
    assert steps[1][:3] == [f"{venv}/bin/python", "-m", "pip"]  # the new venv's own pip
    assert steps[1][-1] == f"outpost=={NEW}"  # and nothing after it: not pip's wheel


def test_bad_releases_are_refused_before_anything_is_installed(
    received: tuple[Path, HubPaths], tmp_path: Path
) -> None:
    release, hub = received
    key = hub_key(hub)
    assert selfupdate.check_release(release, key, running=__version__).version == NEW

    other = "aarch64" if MACHINE != "aarch64" else "x86_64"
    with pytest.raises(InstallError, match=f"is for {MACHINE}, not this device's {other}"):
        selfupdate.check_release(release, key, running=__version__, machine=other)
    with pytest.raises(InstallError, match=f"not newer than the running {NEW}"):
        selfupdate.check_release(release, key, running=NEW)
    with pytest.raises(InstallError, match=f"updates agents from {__version__} on; this one is"):
        selfupdate.check_release(release, key, running="0.0.1")
    stranger = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(InstallError, match="signature does not verify"):
        selfupdate.check_release(release, stranger, running=__version__)

    changed = tmp_path / "changed"
    shutil.copytree(release, changed)
    wheel = next((changed / "files").glob("outpost-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[200] ^= 0xFF
    wheel.write_bytes(bytes(data))
    with pytest.raises(InstallError, match="does not match the manifest"):
        selfupdate.check_release(changed, key, running=__version__)
    signed = agentrelease.read_signed(release)
    forged = agentrelease.sign(
        ed25519.Ed25519PrivateKey.generate(),
        agentrelease.verify(key, signed)[0],
        0.0,
    )
    agentrelease.write_signed(changed, forged)
    with pytest.raises(InstallError, match="signature does not verify"):
        selfupdate.check_release(changed, key, running=__version__)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_disk_that_fills_during_the_install_leaves_the_running_version(
    received: tuple[Path, HubPaths], enroll_device: Enroller, tmp_path: Path
) -> None:
    """The releases live on a real 48 MiB file system: the venv fits, the wheels' ~150
    MiB unpacked do not. pip fails with the kernel's ENOSPC, a `DiskError` (which the
    updater reports as a failure the release may get past, not a refusal); the half-made
    folder goes, so the space is free again, and `current` still names the running
    version."""
    release, hub = received
    data = await data_folder(enroll_device)
    manifest = selfupdate.check_release(release, hub_key(hub), running=__version__)
    with disks.small_disk(tmp_path / "opt-outpost", "48m") as prefix:
        running = prefix / "releases" / __version__
        running.mkdir(parents=True)
        (running / selfupdate.COMPLETE).write_text(__version__)
        (prefix / "current").symlink_to(Path("releases") / __version__)

        with pytest.raises(selfupdate.DiskError, match="installing its wheels") as failed:
            await asyncio.to_thread(selfupdate.install, release, manifest, prefix=prefix, data=data)

        assert "No space left on device" in str(failed.value) or "Errno 28" in str(failed.value), (
            failed.value
        )
        assert not (prefix / "releases" / NEW).exists()
        assert os.readlink(prefix / "current") == f"releases/{__version__}"
        assert sorted(p.name for p in (prefix / "releases").iterdir()) == [__version__]
        assert shutil.disk_usage(prefix).used < 1 << 20  # what it wrote is gone
