"""Roll-out stages in the hub's store (a real SQLite file, a real PostgreSQL database):
canaries first, the rest when every canary is active; a failing canary halts;
supersession; desired releases."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.store import Device, HubStore, RolloutRefusedError, StoredModel
from hub.store.sql import Sql
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    s = HubStore(database(request, tmp_path))
    yield s
    s.close()


async def _devices(store: HubStore, count: int, labels: dict[str, str]) -> list[str]:
    ids = [f"dev-{i:02d}" for i in range(count)]
    for device_id in ids:
        await store.add_device(
            Device(
                device_id=device_id,
                profile="generic",
                labels=labels,
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


async def _model(store: HubStore, version: str) -> None:
    assert await store.add_model(
        StoredModel("m", version, "ab" * 32, 10, {}, f"doc {version}".encode(), b"sig", 1.0, "t")
    )


async def _start(store: HubStore, version: str, share: float, **selector: str) -> int:
    rollout = await store.create_rollout(
        name="m", version=version, selector=selector, canary_share=share, by="t", now=time.time()
    )
    return rollout.id


async def test_rest_is_released_only_when_every_canary_is_active(store: HubStore) -> None:
    ids = await _devices(store, 5, {"site": "a"})
    await _model(store, "1")
    rid = await _start(store, "1", 0.3, site="a")
    rollout = await store.rollout(rid)
    assert rollout is not None
    canaries = [d.device_id for d in rollout.devices if d.stage == "canary"]
    assert canaries == ids[:2]  # ceil(0.3 * 5), by id among equally offline devices
    assert {d.state for d in rollout.devices if d.stage == "rest"} == {"waiting"}
    assert await store.desired_releases(ids[4]) == []  # not released yet
    assert await store.desired_releases(ids[0]) == [(b"doc 1", b"sig")]

    first = await store.record_model_state(ids[0], "m", "1", "active", "", now=time.time())
    assert (first[0].state, first[0].released) == ("canary", [])
    # A report from a device the roll-out has not released yet changes nothing.
    assert await store.record_model_state(ids[4], "m", "1", "active", "", now=1) == []

    second = await store.record_model_state(ids[1], "m", "1", "active", "", now=time.time())
    assert (second[0].state, second[0].released) == ("rolling", ids[2:])
    assert await store.desired_releases(ids[4]) == [(b"doc 1", b"sig")]

    for device_id in ids[2:4]:
        await store.record_model_state(device_id, "m", "1", "active", "", now=time.time())
    last = await store.record_model_state(ids[4], "m", "1", "failed", "sha256", now=time.time())
    assert (last[0].state, last[0].reason) == ("completed", "1 of 5 devices failed")


async def test_a_failing_canary_halts_the_rollout(store: HubStore) -> None:
    ids = await _devices(store, 3, {})
    await _model(store, "1")
    rid = await _start(store, "1", 0.0)  # one canary at least
    await store.record_model_state(
        ids[0], "m", "1", "rolled_back", "5 faults in a row", now=time.time()
    )
    rollout = await store.rollout(rid)
    assert rollout is not None
    assert rollout.state == "halted"
    assert rollout.reason == f"canary {ids[0]} rolled back: 5 faults in a row"
    assert [d.state for d in rollout.devices] == ["rolled_back", "waiting", "waiting"]
    # Halted stays halted: a later good report releases nobody.
    moved = await store.record_model_state(ids[0], "m", "1", "active", "", now=time.time())
    assert (moved[0].state, moved[0].released) == ("halted", [])


async def test_a_newer_rollout_takes_the_devices_it_targets(store: HubStore) -> None:
    ids = await _devices(store, 3, {})
    await _model(store, "1")
    await _model(store, "2")
    first = await _start(store, "1", 0.0)  # ids[0] canary; ids[1], ids[2] waiting
    second = await _start(store, "2", 0.0)  # takes all three: ids[0] its canary
    old = await store.rollout(first)
    assert old is not None
    # Each device is given only its newest roll-out's release: none would ever report
    # on the old one, which ends rather than waiting for ever.
    assert [(d.device_id, d.state) for d in old.devices] == [
        (ids[0], "superseded"),
        (ids[1], "superseded"),
        (ids[2], "superseded"),
    ]
    assert old.state == "superseded"
    assert await store.desired_releases(ids[0]) == [(b"doc 2", b"sig")]  # newest wins
    new = await store.rollout(second)
    assert new is not None
    assert [d.state for d in new.devices] == ["released", "waiting", "waiting"]


async def test_a_rollout_whose_canary_was_taken_picks_another_and_goes_on(
    store: HubStore,
) -> None:
    ids = await _devices(store, 3, {"site": "y"})

    def relabel(db: Sql) -> None:
        with db.write():
            db.execute(
                "UPDATE devices SET labels = ? WHERE device_id = ?", ('{"site": "x"}', ids[0])
            )

    await store.run(relabel)
    await _model(store, "1")
    await _model(store, "2")
    first = await _start(store, "1", 0.0)  # every device; ids[0] its canary
    await _start(store, "2", 0.0, site="x")  # a hot fix takes ids[0] before it ran 1
    old = await store.rollout(first)
    assert old is not None
    assert old.state == "canary"
    assert [(d.device_id, d.stage, d.state) for d in old.devices] == [
        (ids[0], "canary", "superseded"),
        (ids[1], "canary", "released"),  # the next device waiting, now its canary
        (ids[2], "rest", "waiting"),
    ]
    assert await store.desired_releases(ids[1]) == [(b"doc 1", b"sig")]

    moved = await store.record_model_state(ids[1], "m", "1", "active", "", now=time.time())
    assert [(m.rollout_id, m.state, m.released) for m in moved] == [(first, "rolling", [ids[2]])]
    moved = await store.record_model_state(ids[2], "m", "1", "active", "", now=time.time())
    assert [(m.rollout_id, m.state) for m in moved] == [(first, "completed")]


async def test_a_halted_rollout_stops_delivering_its_release(store: HubStore) -> None:
    ids = await _devices(store, 3, {})
    await _model(store, "1")
    await _model(store, "2")
    await _start(store, "1", 1.0)
    rid = await _start(store, "2", 0.5)  # two canaries
    assert await store.desired_releases(ids[1]) == [(b"doc 2", b"sig")]
    (moved,) = await store.record_model_state(ids[0], "m", "2", "failed", "sha", now=time.time())
    assert (moved.rollout_id, moved.state, moved.halted_now) == (rid, "halted", True)
    # The other canary, offline meanwhile, is given 1 again, not the halted 2.
    assert await store.desired_releases(ids[1]) == [(b"doc 1", b"sig")]


async def test_a_failure_the_device_may_get_past_blocks_it_not_the_rollout(
    store: HubStore,
) -> None:
    ids = await _devices(store, 2, {})
    await _model(store, "1")
    rid = await _start(store, "1", 0.0)
    (moved,) = await store.record_model_state(
        ids[0], "m", "1", "failed", "not allowed by policy", now=time.time(), final=False
    )
    assert moved.state == "canary"
    rollout = await store.rollout(rid)
    assert rollout is not None
    assert (rollout.devices[0].state, rollout.devices[0].detail) == (
        "blocked",
        "not allowed by policy",
    )
    (moved,) = await store.record_model_state(ids[0], "m", "1", "active", "", now=time.time())
    assert (moved.state, moved.released) == ("rolling", [ids[1]])


async def test_a_revoked_device_no_longer_holds_a_rollout_up(store: HubStore) -> None:
    ids = await _devices(store, 2, {})
    await _model(store, "1")
    rid = await _start(store, "1", 0.5)
    await store.record_model_state(ids[0], "m", "1", "active", "", now=time.time())
    assert await store.revoke_device(ids[1], now=time.time(), by="test") is not None
    rollout = await store.rollout(rid)
    assert rollout is not None
    assert (rollout.state, rollout.reason) == ("completed", "")  # withdrawn, not failed
    assert (rollout.devices[1].state, rollout.devices[1].detail) == ("withdrawn", "device revoked")
    assert rollout.counts == {"active": 1, "withdrawn": 1}
    # A new roll-out leaves it out.
    again = await store.create_rollout(
        name="m", version="1", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    assert [d.device_id for d in again.devices] == [ids[0]]


async def test_revoking_a_canary_neither_halts_nor_proves_the_rollout(store: HubStore) -> None:
    """A device lost or stolen says nothing about the release: its rows end `withdrawn`,
    and the canary stage goes on with the canaries left (or the next device waiting)."""
    ids = await _devices(store, 5, {})
    await _model(store, "1")
    rid = await _start(store, "1", 0.4)  # canaries ids[0], ids[1]
    await store.record_model_state(ids[0], "m", "1", "active", "", now=time.time())

    assert await store.revoke_device(ids[1], now=time.time(), by="test") is not None

    rollout = await store.rollout(rid)
    assert rollout is not None
    assert (rollout.state, rollout.reason) == ("rolling", "")
    assert [(d.device_id, d.state) for d in rollout.devices] == [
        (ids[0], "active"),
        (ids[1], "withdrawn"),
        (ids[2], "released"),
        (ids[3], "released"),
        (ids[4], "released"),
    ]
    assert await store.desired_releases(ids[0]) == [(b"doc 1", b"sig")]  # not taken back
    # A report it sent before it was revoked changes nothing any more.
    await store.record_model_state(ids[1], "m", "1", "failed", "late", now=time.time())
    rollout = await store.rollout(rid)
    assert rollout is not None
    assert (rollout.state, rollout.devices[1].state) == ("rolling", "withdrawn")

    # Through the API's path (withdraw_device) too; a stage whose only canary is revoked
    # makes the next device waiting its canary rather than releasing the rest unproven.
    await _model(store, "2")
    second = await _start(store, "2", 0.0)  # ids[0] its canary
    moved = await store.drop_from_rollouts(ids[0], "device revoked", now=time.time())
    assert [(m.rollout_id, m.state, m.released) for m in moved] == [(second, "canary", [ids[2]])]


async def test_a_halt_never_gives_a_device_back_a_release_it_failed(store: HubStore) -> None:
    ids = await _devices(store, 2, {})
    for version in ("2", "3"):
        await _model(store, version)
    await _start(store, "2", 0.5)
    await store.record_model_state(ids[0], "m", "2", "active", "", now=time.time())
    (moved,) = await store.record_model_state(ids[1], "m", "2", "failed", "s", now=time.time())
    assert moved.state == "completed"
    # ids[1] failed 2 for good and serves what it had; a failed release is never retried.
    assert await store.desired_releases(ids[1]) == []
    second = await _start(store, "3", 1.0)
    await store.record_model_state(ids[1], "m", "3", "active", "", now=time.time())
    (moved,) = await store.record_model_state(ids[0], "m", "3", "failed", "x", now=time.time())
    assert (moved.rollout_id, moved.state) == (second, "halted")

    assert await store.desired_releases(ids[0]) == [(b"doc 2", b"sig")]  # the control
    assert await store.desired_releases(ids[1]) == []  # not 2 again


async def test_releases_a_device_holds_must_fit_one_message(store: HubStore) -> None:
    await _devices(store, 1, {})
    big = b"x" * (150 * 1024)
    for name in ("a", "b"):
        assert await store.add_model(
            StoredModel(name, "1", "ab" * 32, 10, {}, big, b"sig", 1.0, "t")
        )
    await store.create_rollout(
        name="a", version="1", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    with pytest.raises(RolloutRefusedError, match="would hold 307200 bytes of releases"):
        await store.create_rollout(
            name="b", version="1", selector={}, canary_share=1.0, by="t", now=time.time()
        )


async def test_a_shadow_counts_the_live_release_it_runs_beside(store: HubStore) -> None:
    """The offer carries the live release and the candidate together: over the bound,
    the agent would refuse the whole message and take no release at all."""
    await _devices(store, 1, {})
    big = b"x" * (150 * 1024)
    for version in ("1", "2"):
        assert await store.add_model(
            StoredModel("a", version, "ab" * 32, 10, {}, big, b"sig", 1.0, "t")
        )
    await store.create_rollout(
        name="a", version="1", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    with pytest.raises(RolloutRefusedError, match="would hold 307200 bytes of releases"):
        await store.create_rollout(
            name="a", version="2", selector={}, canary_share=1.0, by="t", now=time.time(),
            mode="shadow",
        )  # fmt: skip
    # The control: a staged roll-out of it replaces the live release, and fits.
    await store.create_rollout(
        name="a", version="2", selector={}, canary_share=1.0, by="t", now=time.time()
    )


async def test_refusals(store: HubStore) -> None:
    await _devices(store, 1, {"site": "a"})
    with pytest.raises(RolloutRefusedError, match="no model m 1 was uploaded"):
        await _start(store, "1", 0.5)
    await _model(store, "1")
    with pytest.raises(RolloutRefusedError, match="matches no enrolled device"):
        await _start(store, "1", 0.5, site="b")
    assert not await store.add_model(
        StoredModel("m", "1", "cd" * 32, 10, {}, b"other", b"sig", 1.0, "t")
    )
