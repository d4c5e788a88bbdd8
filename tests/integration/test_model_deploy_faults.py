"""A device's model deployment when its disk or the hub's offers misbehave (the same
real HTTPS server, model directory and interpreter as test_model_deploy.py): a full disk
while installing leaves no half copy and is tried again; a shadow candidate of a model
the device does not serve never starts serving on its own; a version that would take
the name of the `active` file is refused."""

from __future__ import annotations

import asyncio
import errno
import shutil
from pathlib import Path

import msgspec
import pytest

from edge.deploy import STATE_FILE, Deployer
from edge.deploystate import DeployStates, Record
from edge.inference.reporting import Reporting
from edge.inference.service import InferenceService
from outpost import schema, wire
from outpost.modelbundle import Manifest, read_bundle
from tests.integration.test_model_deploy import (  # noqa: F401 - the fixture
    FOLDERS,
    SURFACE,
    VIBRATION,
    Device,
    device,
)
from tests.support import eventually


async def test_a_full_disk_while_installing_leaves_no_half_copy_and_is_tried_again(
    device: Device,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = shutil.copyfile

    def full_disk(source: Path, target: Path) -> Path:
        if Path(source).name == "model.tflite":
            Path(target).write_bytes(Path(source).read_bytes()[:4096])  # what fitted
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    served = device.server.serve(VIBRATION, "1.0.1")
    offered = device.release(VIBRATION, "1.0.1")
    await device.offer(offered)
    failed = await device.state(VIBRATION, "1.0.1", "failed")

    assert "No space left" in failed.detail
    assert failed.final is False  # the disk's fault, not the release's
    home = device.paths.models / VIBRATION
    assert sorted(p.name for p in home.iterdir()) == ["1.0.0", "active"]  # no .partial
    assert device.service.slots.serving(VIBRATION) == "1.0.0"

    monkeypatch.setattr(shutil, "copyfile", real)  # room again
    await device.offer(offered)  # the hub's offer, as at the next hello
    await device.state(VIBRATION, "1.0.1", "active")
    assert device.service.slots.serving(VIBRATION) == "1.0.1"
    assert served.ranges == [None]  # the checked file was kept: not downloaded again
    assert device.leftovers() == []


async def test_a_shadow_candidate_of_a_model_not_served_never_serves_after_a_restart(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    device.server.serve(SURFACE, "1.0.0")
    candidate = device.release(SURFACE, "1.0.0")
    assert device.deployer is not None
    await device.deployer.offer(wire.ModelReleases(releases=[], shadows=[candidate]))

    async def shadowing() -> bool:
        return device.service.shadows.candidate(SURFACE) == "1.0.0"

    await eventually(shadowing, timeout=10, what="the candidate run in shadow")
    await device.deployer.offer(wire.ModelReleases(releases=[]))  # the shadow stopped
    await device.stop_deployer()
    await restart_service(device)

    assert device.service.slots.serving(SURFACE) is None
    assert SURFACE not in [m.name for m in device.service.inventory()]
    assert device.service.slots.serving(VIBRATION) == "1.0.0"  # the control: still serves


def test_a_version_named_like_the_active_file_is_refused() -> None:
    manifest = read_bundle(FOLDERS[VIBRATION]).manifest
    with pytest.raises(schema.SchemaError, match="reserved"):
        schema.load(Manifest, {**manifest.to_dict(), "version": "active"}, "manifest")
    renamed = msgspec.structs.replace(manifest, version="active2")  # the control
    assert renamed.version == "active2"


async def test_a_release_withdrawn_while_it_downloads_is_not_activated(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    """The hub halts the roll-out of 1.0.1 while the device downloads it: its offer
    names 1.0.0 again. The download stops, 1.0.1 is not activated, 1.0.0 serves."""
    gate = asyncio.Event()
    device.server.serve(VIBRATION, "1.0.1", gate=gate)
    old = device.release(VIBRATION, "1.0.0")
    await device.offer(old)
    await device.state(VIBRATION, "1.0.0", "active")
    await device.offer(device.release(VIBRATION, "1.0.1"))
    await device.state(VIBRATION, "1.0.1", "downloading")

    await device.offer(old)  # the halt
    stopped = await device.state(VIBRATION, "1.0.1", "failed")
    gate.set()

    assert stopped.final is False  # offered again later, it is tried again
    assert "no longer offered" in stopped.detail
    assert device.service.slots.serving(VIBRATION) == "1.0.0"
    assert device.directory.active(VIBRATION) == "1.0.0"
    # The control: offered again, it downloads (resuming) and serves.
    await device.offer(device.release(VIBRATION, "1.0.1"))
    await device.state(VIBRATION, "1.0.1", "active")
    assert device.service.slots.serving(VIBRATION) == "1.0.1"


async def test_a_download_that_cannot_finish_does_not_hold_back_a_newer_release(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    """The link to the hub is gone while 1.0.1 downloads; a courier bundle brings the
    hub's newer wish, 1.0.2, with its file: the stuck download gives way to it."""
    device.server.serve(VIBRATION, "1.0.1", errors=[503] * 100_000)
    await device.offer(device.release(VIBRATION, "1.0.1"))
    await device.state(VIBRATION, "1.0.1", "downloading")
    data = (FOLDERS[VIBRATION] / "model.tflite").read_bytes()
    sha = read_bundle(FOLDERS[VIBRATION]).manifest.sha256
    assert device.deployer is not None
    await device.deployer.stage(VIBRATION, "1.0.2", sha, data)

    await device.offer(device.release(VIBRATION, "1.0.2"))

    await device.state(VIBRATION, "1.0.2", "active")
    assert device.service.slots.serving(VIBRATION) == "1.0.2"


async def test_a_release_the_policy_held_back_is_tried_when_the_policy_allows_it(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    """At once, not at the next hello (which may be weeks away on a steady link)."""
    device.server.serve(SURFACE, "1.0.0")
    device.service.allowed_models = frozenset({VIBRATION})
    await device.offer(device.release(SURFACE, "1.0.0"))
    await device.state(SURFACE, "1.0.0", "failed")
    assert device.deployer is not None
    device.deployer.allowed_models_changed()  # the control: still not allowed
    assert device.deployer.queued() == []
    assert device.history(SURFACE) == [("1.0.0", "failed")]  # not tried again

    device.service.allowed_models = frozenset()  # a new policy, as Tuning.apply sets it
    device.deployer.allowed_models_changed()

    await device.state(SURFACE, "1.0.0", "active")


async def test_old_versions_go_once_a_new_one_is_active(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    for patch in range(1, 6):
        version = f"1.0.{patch}"
        device.server.serve(VIBRATION, version)
        await device.offer(device.release(VIBRATION, version))
        await device.state(VIBRATION, version, "active")

    # The active one, its fallback and the newest few stay; the rest went. The old ones
    # go after the "active" report (the report does not wait for the deletion).
    kept = ["1.0.3", "1.0.4", "1.0.5"]

    async def pruned() -> bool:
        return device.directory.versions(VIBRATION) == kept

    await eventually(pruned, timeout=10, what=f"only {kept} left")
    assert device.service.slots.serving(VIBRATION) == "1.0.5"


async def test_a_crash_right_after_the_swap_keeps_what_the_version_falls_back_to(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    """Killed after the swap wrote `active`, before the "active" record: at the restart
    the new version serves already, and the retained offer must still know what it
    replaced, or a version that keeps faulting is never rolled back."""
    device.server.serve(VIBRATION, "1.0.1")
    offered = device.release(VIBRATION, "1.0.1")
    real_set = Deployer._set

    async def killed_at_the_record(self: Deployer, record: Record) -> None:
        if record.state == "active":
            raise asyncio.CancelledError  # the process ends here
        await real_set(self, record)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Deployer, "_set", killed_at_the_record)
        await device.offer(offered)

        async def swapped() -> bool:
            return device.directory.active(VIBRATION) == "1.0.1"

        await eventually(swapped, timeout=10, what="the swap")
        await device.stop_deployer()
    await restart_service(device)
    assert device.service.slots.serving(VIBRATION) == "1.0.1"
    await device.start_deployer()

    await device.offer(offered)  # the retained offer, at the reconnection

    await device.state(VIBRATION, "1.0.1", "active")
    kept = DeployStates.load(device.paths.models / STATE_FILE).find_version(VIBRATION, "1.0.1")
    assert kept is not None
    assert (kept.state, kept.previous) == ("active", "1.0.0")
    slot = device.service.slots.get(VIBRATION)
    assert slot is not None
    assert slot.runner is not None
    assert slot.runner.watch.fallback == "1.0.0"


async def restart_service(on: Device) -> None:
    """The inference service closed and started again, as the agent's restart does."""
    await on.service.close()
    on.service = InferenceService(on.directory, on.store, reporting=Reporting("none"))
    await on.service.start()
