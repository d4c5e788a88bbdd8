"""The agent's self-update when versions are odd or the device's disk is full: versions
are ordered as pip orders them (a release candidate before its release), a manifest no
agent could take is refused where it is checked, and a full disk, while downloading or
installing, is reported as a failure the release may get past, without ending the
updater and without refusing the release for good. Every version the launcher rolled
back from stays refused, not only the newest."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from edge import agentupdate, selfupdate
from edge.agentupdate import AgentUpdater
from edge.identity import DevicePaths
from outpost import agentrelease, files, wire
from outpost.agentrelease import AgentFile, AgentManifest, ReleaseFileError
from tests.support import eventually

KEY = ed25519.Ed25519PrivateKey.generate()


def device(tmp_path: Path) -> DevicePaths:
    """A device's data folder holding the hub's signing key, as enrollment leaves it."""
    paths = DevicePaths(tmp_path / "device")
    paths.identity_dir.mkdir(parents=True)
    paths.hub_signing_pub.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


def manifest(version: str = "0.2.0", min_agent: str = "0.1.0") -> AgentManifest:
    wheel = AgentFile(f"outpost-{version}-py3-none-any.whl", "ab" * 32, 10, "any")
    return AgentManifest(version, "3.11", ["x86_64"], [wheel], "0.1.0", min_agent)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0.3.0rc1", "0.3.0"),
        ("0.3.0rc1", "0.3.0rc2"),
        ("0.3.0.dev1", "0.3.0rc1"),
        ("0.3.0.dev1", "0.3.0"),
        ("1.9", "1.10"),
        ("1.2", "1.2.1"),
    ],
)
def test_versions_are_ordered_as_pip_orders_them(older: str, newer: str) -> None:
    assert selfupdate.version_key(older) < selfupdate.version_key(newer)
    assert selfupdate.version_key("1.2.0") == selfupdate.version_key("1.2")


@pytest.mark.parametrize(
    ("changes", "refusal"),
    [
        ({"version": "1.0.0." + "1" * 30}, "longer than 32"),
        ({"version": "1.0.0-x-y-z"}, "not a PEP 440 version"),
        ({"min_agent_version": "0.3.0"}, "no agent could ever update to it"),
    ],
)
def test_a_manifest_no_agent_could_take_is_refused(changes: dict[str, str], refusal: str) -> None:
    agentrelease.check_manifest(manifest())  # the control
    with pytest.raises(ReleaseFileError, match=refusal):
        agentrelease.check_manifest(msgspec.structs.replace(manifest(), **changes))


async def test_a_full_disk_is_reported_and_the_updater_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = device(tmp_path)
    reports: list[wire.ModelState] = []

    async def report(state: wire.ModelState) -> None:
        reports.append(state)

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agentupdate, "_prepare", full)
    updater = AgentUpdater(
        paths, "https://hub.invalid", report, prefix=tmp_path / "opt", running="0.1.0",
        machine="x86_64",
    )  # fmt: skip
    signed = agentrelease.sign(KEY, manifest(), time.time())
    offer = wire.AgentOffer(release=wire.AgentRelease(signed.document, signed.signature))
    running = asyncio.create_task(updater.run())
    try:
        await updater.offer(offer)

        async def failed() -> wire.ModelState | None:
            return next((r for r in reports if r.state == "failed"), None)

        found = await eventually(failed, timeout=10, what="the failure reported")
        assert found is not None
        assert (found.version, found.final) == ("0.2.0", False)
        assert "No space left" in found.detail
        assert not running.done()  # the agent goes on
        assert updater.states() == []  # not a refusal to repeat after each hello

        reports.clear()
        await updater.offer(offer)  # offered again (the next hello): tried again
        await eventually(failed, timeout=10, what="the second try reported")
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


async def test_an_update_the_hub_withdraws_while_it_downloads_is_not_switched_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A halted roll-out: the hub's offer names no release any more while the device
    still downloads it. It is not installed over the running version."""
    paths = device(tmp_path)
    reports: list[wire.ModelState] = []
    switched: list[str] = []
    fetching, go_on = asyncio.Event(), asyncio.Event()

    async def report(state: wire.ModelState) -> None:
        reports.append(state)

    async def slow_fetch(self: AgentUpdater, version: str, entry: object, files: Path) -> None:
        fetching.set()
        await go_on.wait()

    monkeypatch.setattr(AgentUpdater, "_fetch", slow_fetch)
    monkeypatch.setattr(selfupdate, "check_release", lambda *a, **k: manifest())
    monkeypatch.setattr(selfupdate, "install", lambda *a, **k: tmp_path)
    monkeypatch.setattr(selfupdate, "switch", lambda prefix, version: switched.append(version))
    updater = AgentUpdater(
        paths, "https://hub.invalid", report, prefix=tmp_path / "opt", running="0.1.0",
        machine="x86_64",
    )  # fmt: skip
    signed = agentrelease.sign(KEY, manifest(), time.time())
    offer = wire.AgentOffer(release=wire.AgentRelease(signed.document, signed.signature))
    running = asyncio.create_task(updater.run())
    try:
        await updater.offer(offer)
        await asyncio.wait_for(fetching.wait(), 10)
        await updater.offer(wire.AgentOffer(release=None))  # the halt
        go_on.set()

        async def withdrawn() -> wire.ModelState | None:
            return next((r for r in reports if r.state == "failed"), None)

        found = await eventually(withdrawn, timeout=10, what="the withdrawal reported")
        assert found is not None
        assert "no longer offered" in found.detail
        assert found.final is False
        assert switched == []
        assert not running.done()
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running


def test_a_switch_keeps_only_the_new_release_and_the_one_it_falls_back_to(
    tmp_path: Path,
) -> None:
    """Each release is a whole venv: after a switch, older ones and a half-made one are
    removed, so a device's card does not fill one update at a time."""
    prefix = tmp_path / "opt"
    for version in ("0.1.0", "0.2.0", "0.3.0"):
        (prefix / "releases" / version / "venv").mkdir(parents=True)
        (prefix / "releases" / version / selfupdate.COMPLETE).write_text(version)
    (prefix / "releases" / "0.2.5" / "venv").mkdir(parents=True)  # an install cut short
    (prefix / "current").symlink_to(Path("releases") / "0.2.0")
    (prefix / "previous").symlink_to(Path("releases") / "0.1.0")

    installed = selfupdate.switch(prefix, "0.3.0")

    assert installed.previous == "0.2.0"
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == ["0.2.0", "0.3.0"]
    assert (prefix / "current").resolve() == (prefix / "releases" / "0.3.0").resolve()
    assert (prefix / "previous").resolve() == (prefix / "releases" / "0.2.0").resolve()
    # A roll-back still has its version to go to.
    assert selfupdate.roll_back(prefix) == "0.2.0"
    assert (prefix / "current" / "venv").is_dir()


async def test_a_release_refused_for_good_is_not_fetched_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's retained offer may name a release the device refused (its selfcheck
    failed) long after: each start downloaded it again, tens of MiB on a metered link,
    then refused it again. Refusals are kept in the data folder."""
    paths = device(tmp_path)
    paths.root.mkdir(parents=True, exist_ok=True)
    reports: list[wire.ModelState] = []
    fetched: list[str] = []

    async def report(state: wire.ModelState) -> None:
        reports.append(state)

    async def fetch(self: AgentUpdater, version: str, entry: object, files: Path) -> None:
        fetched.append(version)

    def install(*args: object, **kwargs: object) -> Path:
        raise selfupdate.InstallError("its selfcheck failed")

    monkeypatch.setattr(AgentUpdater, "_fetch", fetch)
    monkeypatch.setattr(selfupdate, "check_release", lambda *a, **k: manifest())
    monkeypatch.setattr(selfupdate, "install", install)
    signed = agentrelease.sign(KEY, manifest(), time.time())
    offer = wire.AgentOffer(release=wire.AgentRelease(signed.document, signed.signature))

    async def failed() -> wire.ModelState | None:
        return next((r for r in reports if r.state == "failed"), None)

    for life in range(2):  # the agent, then the same agent after a restart
        updater = AgentUpdater(
            paths, "https://hub.invalid", report, prefix=tmp_path / "opt", running="0.1.0",
            machine="x86_64",
        )  # fmt: skip
        await updater.load()
        running = asyncio.create_task(updater.run())
        try:
            reports.clear()
            await updater.offer(offer)
            found = await eventually(failed, timeout=10, what=f"the refusal in life {life}")
            assert found is not None
            assert (found.version, found.final) == ("0.2.0", True)
        finally:
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
    assert fetched == ["0.2.0"]  # once, in the first life only
    last = await failed()
    assert last is not None
    assert "refused before" in last.detail


async def test_a_full_disk_while_installing_is_no_refusal_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The venv and wheels went in; the disk fills as the install is marked whole."""
    paths = device(tmp_path)
    paths.root.mkdir(parents=True, exist_ok=True)
    reports: list[wire.ModelState] = []

    async def report(state: wire.ModelState) -> None:
        reports.append(state)

    async def fetch(self: AgentUpdater, version: str, entry: object, files: Path) -> None:
        pass

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(AgentUpdater, "_fetch", fetch)
    monkeypatch.setattr(selfupdate, "check_release", lambda *a, **k: manifest())
    monkeypatch.setattr(selfupdate, "_step", lambda *a, **k: None)  # venv, pip, selfcheck
    monkeypatch.setattr(os, "sync", lambda: None)
    # outpost.files as selfupdate sees it, but for `replace`, which marks the install whole.
    stub = SimpleNamespace(replace=full, sync_dir=files.sync_dir, PUBLIC=files.PUBLIC)
    monkeypatch.setattr("edge.selfupdate.files", stub)
    updater = AgentUpdater(
        paths, "https://hub.invalid", report, prefix=tmp_path / "opt", running="0.1.0",
        machine="x86_64",
    )  # fmt: skip
    await updater.load()
    signed = agentrelease.sign(KEY, manifest(), time.time())
    offer = wire.AgentOffer(release=wire.AgentRelease(signed.document, signed.signature))

    async def failed() -> wire.ModelState | None:
        return next((r for r in reports if r.state == "failed"), None)

    running = asyncio.create_task(updater.run())
    try:
        await updater.offer(offer)
        found = await eventually(failed, timeout=10, what="the failure reported")
        assert found is not None
        assert (found.version, found.final) == ("0.2.0", False)
        assert found.detail == "not installed: No space left on device"
        assert updater.states() == []
        assert not (paths.root / agentupdate.REFUSED).exists()

        reports.clear()
        await updater.offer(offer)  # room again by the next offer: tried again
        found = await eventually(failed, timeout=10, what="the second try reported")
        assert found is not None
        assert "refused before" not in found.detail
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert not (tmp_path / "opt" / "releases" / "0.2.0").exists()


@pytest.mark.parametrize(
    ("said", "disk"),
    [
        ("ERROR: Could not install packages due to an OSError: [Errno 28] No space left", True),
        ("store: cannot be read or migrated: database or disk is full", True),
        ("store: after migrating a copy, quick_check: wrong # of entries", False),
        ("ERROR: No matching distribution found for outpost==0.2.0", False),
    ],
)
def test_a_step_that_failed_for_want_of_space_says_so(said: str, disk: bool) -> None:
    """pip (and the selfcheck) run as processes: their output tells a full disk, which a
    later try may get past, from a release that will not install."""
    program = f"import sys; print({said!r}, file=sys.stderr); sys.exit(1)"
    with pytest.raises(selfupdate.InstallError, match="installing its wheels") as failed:
        selfupdate._step([sys.executable, "-c", program], "installing its wheels")
    assert isinstance(failed.value, selfupdate.DiskError) is disk


async def test_every_version_rolled_back_from_stays_refused(tmp_path: Path) -> None:
    """2.0.0 was rolled back from and reported; later 2.1.0 was too, and its report is
    renamed over 2.0.0's: both stay refused, across restarts."""
    paths = device(tmp_path)
    (paths.root / agentupdate.ROLLED_BACK_REPORTED).write_text(json.dumps({"from": "2.0.0"}))
    rolled = {"from": "2.1.0", "reason": "exited with status 3 before it was ready"}
    (paths.root / agentupdate.ROLLED_BACK).write_text(json.dumps(rolled))

    async def report(state: wire.ModelState) -> None:
        pass

    def updater() -> AgentUpdater:
        return AgentUpdater(paths, "https://hub.invalid", report, prefix=None, running="1.0.0")

    first = updater()
    await first.load()
    assert {"2.0.0", "2.1.0"} <= first._refused
    assert "2.1.0" in [s.version for s in first.states() if s.state == "rolled_back"]
    # The agent reported 2.1.0's rollback (edge/agent.py): its file replaces 2.0.0's.
    (paths.root / agentupdate.ROLLED_BACK).replace(paths.root / agentupdate.ROLLED_BACK_REPORTED)

    again = updater()
    await again.load()
    assert {"2.0.0", "2.1.0"} <= again._refused
    kept = json.loads((paths.root / agentupdate.REFUSED).read_text())
    assert {"2.0.0", "2.1.0"} <= set(kept)


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ("import time; time.sleep(30)", selfupdate.DeviceError),  # past PIP_TIMEOUT_S
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", selfupdate.DeviceError),
        ("import sys; sys.exit('no such distribution')", selfupdate.InstallError),
    ],
)
def test_a_step_the_device_stopped_is_told_from_one_the_release_failed(
    script: str, kind: type[selfupdate.InstallError], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pip step that timed out on a busy board, or was killed (for want of memory),
    refused the release for good, kept across restarts: the hub cannot issue the same
    version again, so the device never took it."""
    monkeypatch.setattr(selfupdate, "PIP_TIMEOUT_S", 1.0)
    with pytest.raises(selfupdate.InstallError) as failed:
        selfupdate._step([sys.executable, "-c", script], "the step")
    assert type(failed.value) is kind


async def test_an_agent_not_installed_side_by_side_is_refused_until_a_restart_only(
    tmp_path: Path,
) -> None:
    """Refused because of how this agent runs, not the release: kept on disk, the
    version stayed refused once the agent was installed side by side."""
    paths = device(tmp_path)
    paths.root.mkdir(parents=True, exist_ok=True)
    reports: list[wire.ModelState] = []

    async def report(state: wire.ModelState) -> None:
        reports.append(state)

    updater = AgentUpdater(
        paths, "https://hub.invalid", report, prefix=None, running="0.1.0", machine="x86_64"
    )
    signed = agentrelease.sign(KEY, manifest(), time.time())
    running = asyncio.create_task(updater.run())
    try:
        await updater.offer(
            wire.AgentOffer(release=wire.AgentRelease(signed.document, signed.signature))
        )

        async def failed() -> wire.ModelState | None:
            return next((r for r in reports if r.state == "failed"), None)

        found = await eventually(failed, timeout=10, what="the refusal")
        assert found is not None
        assert "not installed side by side" in found.detail
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    assert not (paths.root / agentupdate.REFUSED).exists()
