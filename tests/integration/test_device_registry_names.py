"""Device names and the device event log in the hub's store, on both back-ends.

A name is unique in the fleet (a taken one gets -2, -3, ...; a rename to a taken one is
refused and changes nothing), stands wherever the id does, and every change the operator
reads about (enrolled, link lost and restored, renamed, relabelled, renewed, revoked,
policy applied or refused, a model activated or failed) is logged in the transaction of
the change, newest first, once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.store import (
    ConnectionLost,
    Device,
    HeartbeatSeen,
    HelloSeen,
    HubStore,
    IssuedCert,
    NameTakenError,
    PresenceEvent,
    outbox,
)
from hub.store import events as device_events
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


def enrolled(device_id: str, name: str, now: float) -> Device:
    return Device(
        device_id, "generic", {"site": "north"}, False, None, None, None, None, {}, {},
        now, "0a" + device_id[-4:], now, now + 86400, name=name,
    )  # fmt: skip


async def kinds(store: HubStore, device_id: str) -> list[str]:
    return [e.kind for e in await store.device_events(device_id, before=None, limit=100)]


async def test_names_are_unique_and_stand_for_the_id(store: HubStore) -> None:
    now = time.time()
    got = [
        await store.add_device(enrolled("dev-000000000001", "pump-station", now)),
        await store.add_device(enrolled("dev-000000000002", "pump-station", now)),
        await store.add_device(enrolled("dev-000000000003", "pump-station", now)),
        await store.add_device(enrolled("dev-000000000004", "", now)),
    ]
    assert got == ["pump-station", "pump-station-2", "pump-station-3", "dev-000000000004"]
    found = await store.find_device("pump-station-2")
    assert found is not None
    assert found.device_id == "dev-000000000002"
    assert await store.resolve_device("dev-000000000003") == "dev-000000000003"
    assert await store.resolve_device("pump-station-9") is None

    with pytest.raises(NameTakenError):
        await store.update_device(
            "dev-000000000001", labels={"x": "y"}, name="pump-station-2", now=now
        )
    untouched = await store.device("dev-000000000001")
    assert untouched is not None
    assert (untouched.name, untouched.labels) == ("pump-station", {"site": "north"})

    renamed = await store.update_device(
        "dev-000000000001", labels={"site": None, "line": "2"}, name="intake", now=now + 1
    )
    assert renamed is not None
    assert (renamed.name, renamed.labels) == ("intake", {"line": "2"})
    assert await store.resolve_device("pump-station") is None  # the old name is free again
    assert await store.add_device(enrolled("dev-000000000005", "pump-station", now)) == (
        "pump-station"
    )
    events = await store.device_events("dev-000000000001", before=None, limit=10)
    assert [(e.kind, e.detail) for e in events] == [
        ("relabelled", "labels line=2"),
        ("renamed", "pump-station -> intake"),
        ("enrolled", "as pump-station, profile generic"),
    ]


@pytest.mark.parametrize(
    "base",
    [
        "conveyorbeltvisioninspectioncameraunitwestwingfloor2",  # 52 characters
        "a" * 63,  # the longest: each numbered one is cut to fit
        "a" * 58 + "-" * 4 + "b",  # cut before a run of '-', which is stripped too
    ],
)
async def test_a_long_name_asked_by_many_devices_numbers_them_all(
    store: HubStore, base: str
) -> None:
    """Devices imaged alike ask for their (long) host name: each gets one of its own."""
    now = time.time()
    got = [await store.add_device(enrolled(f"dev-0000000000{i:02x}", base, now)) for i in range(12)]
    assert len(set(got)) == 12
    assert got[0] == base
    assert all(len(name) <= 63 for name in got)


async def test_the_event_log_follows_presence_renewal_policy_models_and_revocation(
    store: HubStore,
) -> None:
    now = time.time()
    device_id = "dev-00000000000a"
    await store.add_device(enrolled(device_id, "press", now))
    hello = HelloSeen(device_id, "c1", now + 1, "generic", "0.1.0", 1.0, {})
    await store.record_presence([hello, hello])  # a repeated hello is not news
    await store.record_presence([ConnectionLost(device_id, "c0", now + 2)])  # an old will
    await store.record_presence([ConnectionLost(device_id, "c1", now + 3)])
    await store.record_presence([HeartbeatSeen(device_id, "c2", now + 4, 1.0, {})])
    assert await store.expire_silent(now=now + 100, intervals=3) == [device_id]
    assert await kinds(store, device_id) == ["offline", "online", "offline", "online", "enrolled"]

    await store.refresh_policies([device_id], now=now)
    applied = {"version": 1, "rejected_version": 0, "reason": ""}
    refused = {"version": 1, "rejected_version": 2, "reason": "model not allowed"}
    for policy in (applied, applied, refused):
        await store.record_presence(
            [HeartbeatSeen(device_id, "c3", now + 5, 1.0, {}, policy=policy)]
        )
    for state, detail in (
        ("active", ""),
        ("active", ""),
        ("rolled_back", "crashed"),
        ("downloading", ""),
    ):
        await store.record_model_state(device_id, "m", "1.1.0", state, detail, now=now + 6)
    await store.record_renewal(IssuedCert("0b0a", device_id, now, now + 86400, now + 7, "renew"))
    await store.revoke_device(device_id, now=now + 8, by="alice")
    await store.revoke_device(device_id, now=now + 9, by="bob")  # again: not news
    # A revoked device that still gets through (a broker not yet given the CRL) is never
    # online, so its hello is no "online" event either.
    await store.record_presence([HelloSeen(device_id, "c4", now + 10, "generic", "0.1.0", 1.0, {})])

    events = await store.device_events(device_id, before=None, limit=7)
    assert [(e.kind, e.detail) for e in events] == [
        ("revoked", "by alice"),
        ("renewed", "certificate 0b0a"),
        ("model_rolled_back", "m 1.1.0: crashed"),
        ("model_activated", "m 1.1.0"),
        ("policy_refused", "version 2: model not allowed"),
        ("policy_applied", "version 1"),
        ("online", "heartbeat"),
    ]
    older = await store.device_events(device_id, before=events[-1].id, limit=100)
    assert [e.kind for e in older] == ["offline", "online", "offline", "online", "enrolled"]


async def test_the_log_is_bounded_per_device(store: HubStore) -> None:
    now = time.time()
    for n in (1, 2):
        await store.add_device(enrolled(f"dev-00000000000{n}", f"d{n}", now))
    for i in range(12):
        await store.update_device("dev-000000000001", labels={"i": str(i)}, now=now + i)
    pruned = await store.run(lambda db: device_events.prune(db, keep=5))
    assert pruned == 8  # 13 events of the first device, 5 kept; the other's one stays
    kept = await store.device_events("dev-000000000001", before=None, limit=100)
    assert [e.detail for e in kept] == [f"labels i={i},site=north" for i in range(11, 6, -1)]
    assert await kinds(store, "dev-000000000002") == ["enrolled"]


async def test_the_outbox_reads_a_sink_needs(store: HubStore) -> None:
    store.publish_events()
    now = time.time()
    await store.add_device(enrolled("dev-000000000001", "press", now))
    await store.update_device("dev-000000000001", labels={"line": "2"}, now=now)
    ids = [e.id for e in await store.run(outbox.after, 0, 100)]
    assert len(ids) == 2  # enrolled, relabelled
    assert await store.run(outbox.count_between, 0, ids[-1]) == 2
    assert await store.run(outbox.count_between, ids[0], ids[-1]) == 1
    assert await store.run(outbox.device_labels) == {
        "dev-000000000001": {"line": "2", "site": "north"}
    }


async def test_a_late_heartbeat_of_an_old_connection_leaves_the_device_to_the_new_one(
    store: HubStore,
) -> None:
    now = time.time()
    device_id = "dev-00000000000b"
    await store.add_device(enrolled(device_id, "lathe", now))
    await store.record_presence([HelloSeen(device_id, "old", now, "generic", "0.1.0", 1.0, {})])
    await store.record_presence([HelloSeen(device_id, "new", now + 1, "generic", "0.1.0", 1.0, {})])
    # The old connection's last heartbeat arrives after the new one's hello (another
    # replica, a slow queue), then the old connection's will: the device stays online.
    late: list[PresenceEvent] = [
        HeartbeatSeen(device_id, "old", now + 2, 1.0, {}),
        ConnectionLost(device_id, "old", now + 3),
    ]
    assert await store.record_presence(late) == [False, False]
    found = await store.find_device(device_id)
    assert found is not None
    assert found.online
    # The control: the current connection's will ends it; a heartbeat brings it back on
    # its own connection, and that connection's will is the one that counts then.
    assert await store.record_presence([ConnectionLost(device_id, "new", now + 4)]) == [True]
    assert await store.record_presence([HeartbeatSeen(device_id, "third", now + 5, 1.0, {})]) == [
        True
    ]
    assert await store.record_presence([ConnectionLost(device_id, "new", now + 6)]) == [False]
    assert await store.record_presence([ConnectionLost(device_id, "third", now + 7)]) == [True]
