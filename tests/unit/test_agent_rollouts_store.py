"""Which agent release each device should run (hub/store/agentrollouts.py), on the hub's
store (a SQLite file, a PostgreSQL database): the newest agent roll-out that released
the device and has not halted; nothing for a device still waiting; model roll-outs and
agent roll-outs never touch each other's releases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.store import Device, HubStore, RolloutRefusedError, StoredModel, agentrollouts
from hub.store import agentreleases as registry
from hub.store.presence import HelloSeen
from hub.store.sql import Sql
from outpost.agentrelease import ROLLOUT_NAME as AGENT
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    s = HubStore(database(request, tmp_path))
    yield s
    s.close()


def signed(version: str) -> tuple[bytes, bytes]:
    """The (document, signature) a made-up release of `version` is stored with."""
    return f"agent release {version}".encode(), f"signature {version}".encode()


async def _devices(store: HubStore, count: int) -> list[str]:
    ids = [f"dev-{i:02d}" for i in range(count)]
    for device_id in ids:
        await store.add_device(
            Device(
                device_id=device_id,
                profile="generic",
                labels={},
                online=False,
                last_seen=None,
                last_heartbeat=None,
                heartbeat_interval=None,
                agent_version=None,
                capabilities={},
                load={},
                enrolled_at=1.0,
                cert_serial=device_id.encode().hex(),
                cert_not_before=1.0,
                cert_not_after=2.0,
            )
        )
    return ids


async def _release(store: HubStore, version: str) -> None:
    document, signature = signed(version)
    release = registry.StoredAgentRelease(version, "{}", document, signature, 1.0, "t")
    assert await store.run(registry.add, release)


async def _start(store: HubStore, version: str, share: float, name: str = AGENT) -> list[str]:
    """Start a roll-out; its canaries."""
    rollout = await store.create_rollout(
        name=name, version=version, selector={}, canary_share=share, by="t", now=time.time()
    )
    return [d.device_id for d in rollout.devices if d.stage == "canary"]


async def _desired(store: HubStore, ids: list[str]) -> dict[str, tuple[bytes, bytes]]:
    return await store.run(agentrollouts.desired_agent_of, ids)


async def test_the_released_canaries_get_the_release_and_the_waiting_devices_nothing(
    store: HubStore,
) -> None:
    ids = await _devices(store, 4)
    await _release(store, "1.0.0")
    assert await _desired(store, ids) == {}

    canaries = await _start(store, "1.0.0", 0.5)

    assert canaries == ids[:2]
    assert await _desired(store, ids) == {d: signed("1.0.0") for d in canaries}
    assert await _desired(store, ids[2:]) == {}
    assert await _desired(store, []) == {}
    assert await _desired(store, ["dev-nonesuch"]) == {}


async def test_the_rest_get_it_once_every_canary_runs_it_by_report_or_by_hello(
    store: HubStore,
) -> None:
    ids = await _devices(store, 4)
    await _release(store, "1.0.0")
    canaries = await _start(store, "1.0.0", 0.5)

    # One canary reports the agent active; the other comes back saying it runs it (the
    # hello's agent version, counted as an inventory entry named AGENT).
    await store.record_model_state(canaries[0], AGENT, "1.0.0", "active", "", now=time.time())
    assert await _desired(store, ids[2:]) == {}
    moved = await store.reconcile_inventory([(canaries[1], [(AGENT, "1.0.0")])], now=time.time())

    assert [(m.state, m.released) for m in moved] == [("rolling", ids[2:])]
    assert await _desired(store, ids) == {d: signed("1.0.0") for d in ids}


async def test_a_failed_canary_halts_it_and_no_device_is_given_it_any_more(
    store: HubStore,
) -> None:
    ids = await _devices(store, 3)
    await _release(store, "1.0.0")
    canaries = await _start(store, "1.0.0", 0.5)

    moved = await store.record_model_state(
        canaries[0], AGENT, "1.0.0", "rolled_back", "exited before it was ready", now=1.0
    )

    assert moved[0].state == "halted"
    assert "rolled back: exited before it was ready" in moved[0].reason
    assert await _desired(store, ids) == {}


async def test_the_newest_agent_rollout_that_released_a_device_wins(store: HubStore) -> None:
    ids = await _devices(store, 4)
    for version in ("1.0.0", "1.1.0"):
        await _release(store, version)
    first = await store.create_rollout(
        name=AGENT, version="1.0.0", selector={}, canary_share=0.5, by="t", now=time.time()
    )
    assert [d.device_id for d in first.devices if d.state == "released"] == ids[:2]

    second = await _start(store, "1.1.0", 0.25)  # dev-00 released; the others wait on it

    assert second == ids[:1]
    # dev-01 keeps 1.0.0 (the newer roll-out has not released it); dev-02 and dev-03 were
    # taken from the first roll-out before it released them: neither gives them anything.
    assert await _desired(store, ids) == {ids[0]: signed("1.1.0"), ids[1]: signed("1.0.0")}
    older = await store.rollout(first.id)
    assert older is not None
    assert {d.device_id: d.state for d in older.devices}[ids[2]] == "superseded"


async def test_a_halted_newer_rollout_falls_back_to_the_one_before(store: HubStore) -> None:
    ids = await _devices(store, 2)
    for version in ("1.0.0", "1.1.0"):
        await _release(store, version)
    await _start(store, "1.0.0", 1.0)
    newer = await store.create_rollout(
        name=AGENT, version="1.1.0", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    assert await _desired(store, ids) == {d: signed("1.1.0") for d in ids}

    halted = await store.halt_rollout(newer.id, "by hand", now=time.time())

    assert halted is not None
    assert halted.halted_now
    # An agent never goes back (it refuses a version not newer than its own): offering the
    # older release again is harmless, and a device that had not installed 1.1.0 gets it.
    assert await _desired(store, ids) == {d: signed("1.0.0") for d in ids}


async def test_model_and_agent_rollouts_leave_each_other_alone(store: HubStore) -> None:
    ids = await _devices(store, 2)
    await _release(store, "1.0.0")
    assert await store.add_model(
        StoredModel("m", "1", "ab" * 32, 10, {}, b"model doc", b"model sig", 1.0, "t")
    )
    model_rollout = await store.create_rollout(
        name="m", version="1", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    models = {d: [(b"model doc", b"model sig")] for d in ids}
    assert await store.desired_releases_of(ids) == models
    assert await _desired(store, ids) == {}

    await _start(store, "1.0.0", 1.0)

    assert await store.desired_releases_of(ids) == models
    assert await _desired(store, ids) == {d: signed("1.0.0") for d in ids}
    still = await store.rollout(model_rollout.id)
    assert still is not None
    assert (still.state, {d.state for d in still.devices}) == ("canary", {"released"})
    # An agent report or a hello's version moves no model roll-out, and the other way.
    await store.record_model_state(ids[0], "m", "1", "active", "", now=time.time())
    assert await _desired(store, ids) == {d: signed("1.0.0") for d in ids}


async def test_an_agent_rollout_that_cannot_start_is_refused(store: HubStore) -> None:
    ids = await _devices(store, 1)
    await _release(store, "1.0.0")
    with pytest.raises(RolloutRefusedError, match=r"no agent release 9\.9\.9 was uploaded"):
        await _start(store, "9.9.9", 1.0)
    with pytest.raises(RolloutRefusedError, match="cannot run in shadow"):
        await store.create_rollout(
            name=AGENT, version="1.0.0", selector={}, canary_share=1.0, by="t", now=1.0,
            mode="shadow", criteria={"agreement_min": 0.9},
        )  # fmt: skip
    assert await store.rollouts() == []
    assert await _desired(store, ids) == {}


async def test_devices_that_run_the_version_or_a_newer_one_hold_no_rollout_up(
    store: HubStore,
) -> None:
    """An agent takes only a newer version, so a device that runs this one (or a newer
    one) would never report on it: it counts as active (or superseded) from the start,
    in the rest stage (it proves nothing about updating to it)."""
    ids = await _devices(store, 3)
    runs = {ids[0]: "0.3.0", ids[1]: "0.4.0", ids[2]: "0.3.0rc1"}

    def say_versions(db: Sql) -> None:
        with db.write():
            for device_id, version in runs.items():
                db.execute(
                    "UPDATE devices SET agent_version = ? WHERE device_id = ?",
                    (version, device_id),
                )

    await store.run(say_versions)
    await _release(store, "0.3.0")

    rollout = await store.create_rollout(
        name=AGENT, version="0.3.0", selector={}, canary_share=0.5, by="t", now=time.time()
    )

    found = await store.rollout(rollout.id)
    assert found is not None
    assert [(d.device_id, d.stage, d.state) for d in found.devices] == [
        (ids[2], "canary", "released"),  # the one device that has to update
        (ids[0], "rest", "active"),
        (ids[1], "rest", "superseded"),
    ]
    assert found.state == "canary"
    assert await _desired(store, ids) == {ids[0]: signed("0.3.0"), ids[2]: signed("0.3.0")}

    moved = await store.record_model_state(ids[2], AGENT, "0.3.0", "active", "", now=1.0)
    assert [m.state for m in moved] == ["completed"]


async def test_the_canaries_are_devices_that_have_to_update(store: HubStore) -> None:
    """A roll-out tried again after a halt, on a fleet where one device already runs the
    version: the canary gate waits for a device that updates, never passing on one that
    did not (which would release the fleet unproven)."""
    ids = await _devices(store, 10)
    now = time.time()
    await store.record_presence(
        [
            HelloSeen(d, f"c{i}", now, "generic", "2.0.0" if i == 0 else "1.0.0", 5.0, {})
            for i, d in enumerate(ids)
        ]
    )
    await _release(store, "2.0.0")

    canaries = await _start(store, "2.0.0", 0.1)

    assert canaries == [ids[1]]  # ceil(0.1 * 9) among the 9 that have to update
    found = await store.rollouts()
    assert found[0].state == "canary"
    assert sorted(await _desired(store, ids)) == ids[:2]  # ids[0] runs it; ids[1] the canary
    moved = await store.reconcile_inventory([(ids[1], [(AGENT, "2.0.0")])], now=time.time())
    assert [(m.state, m.released) for m in moved] == [("rolling", ids[2:])]


async def test_an_agent_rollout_nobody_has_to_take_ends_at_once(store: HubStore) -> None:
    ids = await _devices(store, 2)
    now = time.time()
    await store.record_presence(
        [HelloSeen(d, f"c{i}", now, "generic", "2.0.0", 5.0, {}) for i, d in enumerate(ids)]
    )
    await _release(store, "2.0.0")

    assert await _start(store, "2.0.0", 0.5) == []

    (found,) = await store.rollouts()
    assert (found.state, found.counts) == ("completed", {"active": 2})


async def test_a_release_that_failed_on_a_device_is_not_offered_to_it_again(
    store: HubStore,
) -> None:
    ids = await _devices(store, 3)
    await _release(store, "0.3.0")
    await _release(store, "0.4.0")
    await _start(store, "0.3.0", 1.0)  # every device runs 0.3.0 after this one
    for device_id in ids:
        await store.record_model_state(device_id, AGENT, "0.3.0", "active", "", now=time.time())
    assert await _start(store, "0.4.0", 0.3) == [ids[0]]
    await store.record_model_state(ids[0], AGENT, "0.4.0", "active", "", now=time.time())
    # In the rest stage, ids[1] rolls back (the roll-out goes on, with a failure).
    await store.record_model_state(ids[1], AGENT, "0.4.0", "rolled_back", "no", now=time.time())

    desired = await _desired(store, ids)

    assert desired[ids[1]] == signed("0.3.0")  # what it runs again; never 0.4.0 again
    assert desired[ids[2]] == signed("0.4.0")  # the control


async def test_devices_that_cannot_take_the_release_are_left_out(store: HubStore) -> None:
    """A device of another machine, or one too old to update to it, refuses the release
    for good: as a canary it halted an otherwise healthy roll-out. Such devices are left
    out (said in the started event); a device whose hello said neither takes part."""
    ids = await _devices(store, 4)
    now = time.time()
    arm = {"arch": "aarch64"}
    x86 = {"arch": "x86_64"}
    await store.record_presence(
        [
            HelloSeen(ids[0], "c0", now, "generic", "1.0.0", 5.0, arm),  # another machine
            HelloSeen(ids[1], "c1", now, "generic", "0.1.0", 5.0, x86),  # too old
            HelloSeen(ids[2], "c2", now, "generic", "1.0.0", 5.0, x86),  # takes it
        ]  # ids[3] never said hello: its own check is the judge
    )
    manifest = '{"platforms": ["x86_64"], "min_agent_version": "0.5.0"}'
    document, signature = signed("2.0.0")
    release = registry.StoredAgentRelease("2.0.0", manifest, document, signature, 1.0, "t")
    assert await store.run(registry.add, release)

    rollout = await store.create_rollout(
        name=AGENT, version="2.0.0", selector={}, canary_share=0.5, by="t", now=now
    )

    assert sorted(d.device_id for d in rollout.devices) == [ids[2], ids[3]]
    unfit = await store.run(agentrollouts.unfit, "2.0.0", await store.devices())
    assert unfit == {
        ids[0]: "its machine is aarch64; the release is for x86_64",
        ids[1]: "runs agent 0.1.0; it updates 0.5.0 or newer",
    }


async def test_a_release_no_selected_device_can_take_is_refused(store: HubStore) -> None:
    (device,) = await _devices(store, 1)
    now = time.time()
    await store.record_presence(
        [HelloSeen(device, "c0", now, "generic", "1.0.0", 5.0, {"arch": "armv7l"})]
    )
    manifest = '{"platforms": ["x86_64", "aarch64"], "min_agent_version": "0.1.0"}'
    document, signature = signed("2.0.0")
    release = registry.StoredAgentRelease("2.0.0", manifest, document, signature, 1.0, "t")
    assert await store.run(registry.add, release)

    with pytest.raises(RolloutRefusedError) as refused:
        await store.create_rollout(
            name=AGENT, version="2.0.0", selector={}, canary_share=0.5, by="t", now=now
        )
    assert str(refused.value) == (
        "no device the selector {} matches can take agent 2.0.0: "
        f"{device} (its machine is armv7l; the release is for x86_64, aarch64)"
    )
