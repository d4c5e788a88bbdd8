"""A device's model deployment after its own state was damaged (the same real HTTPS
server, model directory and interpreter as test_model_deploy.py): an installed model
file that went bad on disk is downloaded again, not refused for good; a roll-back whose
record a kill lost is not undone by the hub's retained offer, while the version a release
replaced, put back by hand, is no roll-back."""

from __future__ import annotations

import pytest

from edge.deploy import STATE_FILE
from edge.deploystate import DeployStates
from edge.inference.runner import ModelFault
from edge.inference.swap import ModelSlots
from outpost import wire
from tests.integration.test_model_deploy import (  # noqa: F401 - the fixture
    FOLDERS,
    VIBRATION,
    Device,
    device,
)
from tests.integration.test_model_deploy_faults import restart_service
from tests.support import eventually


def rot(on: Device, version: str) -> bytes:
    """Flip bytes of an installed model file, its size unchanged (SD-card bit rot);
    return the good content."""
    model = on.paths.models / VIBRATION / version / "model.tflite"
    good = model.read_bytes()
    model.write_bytes(good[:200] + bytes([good[200] ^ 0xFF]) + good[201:])
    return good


async def test_an_installed_copy_gone_bad_is_downloaded_again(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    served = device.server.serve(VIBRATION, "1.0.0")  # the hub has the good file
    good = rot(device, "1.0.0")
    await device.stop_deployer()
    await restart_service(device)
    assert device.service.slots.serving(VIBRATION) is None  # its load refused the file
    await device.start_deployer()

    await device.offer(device.release(VIBRATION, "1.0.0"))  # the hub's retained wish

    await device.state(VIBRATION, "1.0.0", "active")
    assert served.ranges == [None]
    assert (device.paths.models / VIBRATION / "1.0.0" / "model.tflite").read_bytes() == good
    assert device.directory.active(VIBRATION) == "1.0.0"
    assert await device.infer(VIBRATION) == "1.0.0"


async def test_a_copy_that_goes_bad_before_it_loads_is_not_refused_for_good(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    device.server.serve(VIBRATION, "1.0.1")
    offered = device.release(VIBRATION, "1.0.1")
    real = ModelSlots.activate

    async def rotting_first(slots: ModelSlots, name: str, version: str) -> str | None:
        rot(device, version)  # between the install's check and the load's
        return await real(slots, name, version)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelSlots, "activate", rotting_first)
        await device.offer(offered)
        failed = await device.state(VIBRATION, "1.0.1", "failed")

    assert "differs from the manifest's" in failed.detail
    assert failed.final is False  # the device's copy, not the release
    assert device.service.slots.serving(VIBRATION) == "1.0.0"
    await device.offer(offered)  # the hub's offer, as at the next hello
    await device.state(VIBRATION, "1.0.1", "active")
    assert await device.infer(VIBRATION) == "1.0.1"


async def test_a_roll_back_whose_record_was_lost_is_not_undone_after_a_restart(
    device: Device,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device.server.serve(VIBRATION, "1.0.1")
    offer = device.release(VIBRATION, "1.0.1")
    await device.offer(offer)
    await device.state(VIBRATION, "1.0.1", "active")

    async def killed(name: str, bad: str, restored: str, reason: str) -> None:
        """The process ends after the roll-back switched `active`, before its record."""

    device.service.slots.on_rollback = killed
    runner = device.service.runner(VIBRATION)

    def broken(*args: object) -> object:
        raise ModelFault("the interpreter failed: tensor arena corrupted")

    monkeypatch.setattr(runner, "run_blocking", broken)
    for _ in range(5):
        with pytest.raises(ModelFault):
            await device.infer(VIBRATION)

    async def rolled_back() -> bool:
        return device.service.slots.serving(VIBRATION) == "1.0.0"

    await eventually(rolled_back, timeout=10, what="the roll-back to 1.0.0")
    assert device.directory.active(VIBRATION) == "1.0.0"
    assert device.directory.rolled_back(VIBRATION) == "1.0.1"  # the word the record lost
    await device.stop_deployer()
    await restart_service(device)  # the agent starts again
    deployer = await device.start_deployer()

    async def said() -> bool:
        # The report too: the state is kept in memory first, then saved to its file
        # (a thread), then reported; a report still on its way would land after the
        # clear below, and the file read below could come before the save.
        states = [(s.version, s.state) for s in deployer.states()]
        return states == [("1.0.1", "rolled_back")] and states[0] in device.history(VIBRATION)

    await eventually(said, timeout=10, what="the lost roll-back found at the start")
    device.reports.clear()
    await device.offer(offer)  # the retained offer, redelivered at connect

    assert [(r.version, r.state) for r in device.reports] == [("1.0.1", "rolled_back")]
    assert device.service.slots.serving(VIBRATION) == "1.0.0"
    assert device.server.requests == [(VIBRATION, "1.0.1")]
    kept = DeployStates.load(device.paths.models / STATE_FILE).find_version(VIBRATION, "1.0.1")
    assert kept is not None
    assert kept.state == "rolled_back"


async def test_the_replaced_version_put_back_by_hand_is_no_roll_back(
    device: Device,  # noqa: F811 - the fixture
) -> None:
    """An operator stops the agent and installs the version a release replaced (what
    `outpost-agent models install` calls): it serves as after a roll-back whose record
    was lost, but the release is deployed again, not reported rolled back (final: a
    failure to the hub, and a canary's halt)."""
    device.server.serve(VIBRATION, "1.0.1")
    offer = device.release(VIBRATION, "1.0.1")
    await device.offer(offer)
    await device.state(VIBRATION, "1.0.1", "active")
    await device.stop_deployer()

    device.directory.install(FOLDERS[VIBRATION], activate=True)  # 1.0.0, by hand
    await restart_service(device)
    assert device.service.slots.serving(VIBRATION) == "1.0.0"
    device.reports.clear()
    await device.start_deployer()
    await device.offer(offer)  # the hub's retained wish, redelivered at connect

    async def told() -> wire.ModelState | None:
        return next(iter(device.reports), None)

    first = await eventually(told, timeout=10, what="a report of 1.0.1")
    assert first is not None
    assert (first.version, first.state, first.detail) == ("1.0.1", "active", "")
    assert device.service.slots.serving(VIBRATION) == "1.0.1"
    assert await device.infer(VIBRATION) == "1.0.1"
    assert device.server.requests == [(VIBRATION, "1.0.1")]  # still installed: no download
