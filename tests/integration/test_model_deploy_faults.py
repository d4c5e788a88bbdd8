"""A device's model deployment when its disk or the hub's offers misbehave (the same
real HTTPS server, model directory and interpreter as test_model_deploy.py): a full disk
while installing leaves no half copy and is tried again; a shadow candidate of a model
the device does not serve never starts serving on its own; a version that would take
the name of the `active` file is refused."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import msgspec
import pytest

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
    device.server.serve(VIBRATION, "1.0.1")
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
    await device.service.close()
    device.service = InferenceService(device.directory, device.store, reporting=Reporting("none"))
    await device.service.start()

    assert device.service.slots.serving(SURFACE) is None
    assert SURFACE not in [m.name for m in device.service.inventory()]
    assert device.service.slots.serving(VIBRATION) == "1.0.0"  # the control: still serves


def test_a_version_named_like_the_active_file_is_refused() -> None:
    manifest = read_bundle(FOLDERS[VIBRATION]).manifest
    with pytest.raises(schema.SchemaError, match="reserved"):
        schema.load(Manifest, {**manifest.to_dict(), "version": "active"}, "manifest")
    renamed = msgspec.structs.replace(manifest, version="active2")  # the control
    assert renamed.version == "active2"
