"""What the dashboard and the monitoring read and write, on both back-ends.

A hub with no devices yet: the overview and a policy refresh of no devices answer with
nothing rather than failing (PostgreSQL refuses the empty `IN ()` that SQLite takes: the
live dashboard of a new PostgreSQL hub once showed nothing at all, every snapshot
failing). Roll-ups folded into the statistics: JSON columns written, read back and
merged within the hour. Policy versions after the database was restored from an older
backup."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hub.store import (
    Device,
    HeartbeatSeen,
    HelloSeen,
    HubStore,
    PresenceEvent,
    Upload,
    certs,
    modelstats,
)
from hub.store.policy import Layer
from hub.store.sql import Sql
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


async def test_the_overview_of_an_empty_fleet(store: HubStore) -> None:
    found = await store.overview(after=None, max_devices=50, max_rollouts=5, max_events=50)
    assert (found.devices, found.devices_total, found.devices_online) == ([], 0, 0)
    assert found.policy == {}


async def test_a_policy_refresh_of_no_devices(store: HubStore) -> None:
    assert await store.refresh_policies([], now=time.time()) == []
    assert await store.refresh_policies(None, now=time.time()) == []


def _rollup(normal: int, fault: int) -> bytes:
    return msgspec.msgpack.encode(
        {
            "kind": "rollup",
            "period_s": 60.0,
            "store": {"results": {"records": 1, "bytes": 10, "fill": 0.25}},
            "errors": {"busy": 2},
            "models": {
                "vibration-anomaly@1.0.0": {
                    "count": normal + fault,
                    "latency_ms": {"0.5": normal + fault},
                    "latency_sum_ms": 1.0,
                    "confidence": [0] * 9 + [normal + fault],
                    "confidence_sum": 0.95 * (normal + fault),
                    "labels": {"normal": normal, "imbalance": fault},
                }
            },
        }
    )


async def test_roll_ups_fold_into_statistics_and_merge_within_the_hour(store: HubStore) -> None:
    # Folding writes JSON columns and reads them back to merge: on both back-ends.
    blank: tuple[Any, ...] = (False, None, None, None, None, {}, {}, 1.0, "01", 1.0, 2.0)
    await store.add_device(Device("dev-0001", "generic", {}, *blank))
    now = time.time()
    for seq, (normal, fault) in enumerate([(90, 10), (50, 5)], start=1):
        upload = Upload("dev-0001", "metrics", seq, seq, [(seq, now, _rollup(normal, fault))])
        outcome = await store.apply_uploads([upload], now=now)
        assert outcome.rollups.rollups == 1
    found = await store.model_distributions(since=now - 3600)
    seen = found[("vibration-anomaly", "1.0.0")]["dev-0001"]
    assert seen.count == 155
    assert seen.labels == {"normal": 140, "imbalance": 15}
    assert seen.confidence == [0] * 9 + [155]
    assert await store.device_errors("dev-0001", since=now - 3600) == {"busy": 4}

    # One batch holding two uploads of that device and one of another: each device's
    # roll-ups add up, onto what the statistics held, in one write at the batch's end.
    other: tuple[Any, ...] = (*blank[:8], "02", 1.0, 2.0)  # a certificate of its own
    await store.add_device(Device("dev-0002", "generic", {}, *other))
    batch = [
        Upload("dev-0001", "metrics", 3, 3, [(3, now, _rollup(10, 1))]),
        Upload("dev-0002", "metrics", 1, 1, [(1, now, _rollup(7, 3))]),
        Upload("dev-0001", "metrics", 4, 4, [(4, now, _rollup(20, 2))]),
    ]
    assert (await store.apply_uploads(batch, now=now)).rollups.rollups == 3
    found = await store.model_distributions(since=now - 3600)
    first, second = (found[("vibration-anomaly", "1.0.0")][d] for d in ("dev-0001", "dev-0002"))
    assert (first.count, first.labels) == (188, {"normal": 170, "imbalance": 18})
    assert (second.count, second.labels) == (10, {"normal": 7, "imbalance": 3})
    assert await store.device_errors("dev-0001", since=now - 3600) == {"busy": 8}
    assert await store.device_errors("dev-0002", since=now - 3600) == {"busy": 2}


async def test_a_device_revoked_while_the_day_is_read_is_left_out_whole(
    store: HubStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day's statistics are read an hour a unit of work. A device revoked between two
    hours' reads is left out of the whole day, as if read after: not kept with the hours
    read before, judged (and in the others' reference) after its revocation."""
    now = time.time()
    devices = ("dev-0001", "dev-0002", "dev-0003")
    for n, device_id in enumerate(devices):
        blank: tuple[Any, ...] = (False, None, None, None, None, {}, {}, 1.0, f"0{n}", 1.0, 2.0)
        await store.add_device(Device(device_id, "generic", {}, *blank))
    for seq, at in enumerate((now - 3600, now), start=1):
        batch = [Upload(d, "metrics", seq, seq, [(seq, at, _rollup(50, 10))]) for d in devices]
        assert (await store.apply_uploads(batch, now=now)).rollups.rollups == 3
    read = modelstats.add_hour
    hours: list[int] = []

    def add_hour_then_revoke(db: Sql, sums: modelstats.Sums, hour: int) -> None:
        read(db, sums, hour)
        hours.append(hour)
        if len(hours) == 1:  # between the first hour's read and the second's
            certs.revoke_device(db, "dev-0003", now, "test")

    monkeypatch.setattr(modelstats, "add_hour", add_hour_then_revoke)
    found = await store.model_distributions(since=now - 7200)
    assert len(hours) == 2  # the day was read in two units, the revocation between them
    seen = found[("vibration-anomaly", "1.0.0")]
    assert {d: s.count for d, s in seen.items()} == {"dev-0001": 120, "dev-0002": 120}

    # Read again whole, the day is the same: nothing of it depended on the moment.
    monkeypatch.setattr(modelstats, "add_hour", read)
    again = await store.model_distributions(since=now - 7200)
    assert {d: s.count for d, s in again[("vibration-anomaly", "1.0.0")].items()} == {
        "dev-0001": 120,
        "dev-0002": 120,
    }


def _fleet_layer(interval_s: int) -> Layer:
    document = {"heartbeat_interval_s": interval_s}
    return Layer("fleet", "fleet", {}, None, 0, document, time.time(), "t")


async def test_policy_versions_pass_what_devices_run_after_a_restore(store: HubStore) -> None:
    """A database restored from an older backup gave versions its devices had already
    passed, and each device refused them ("older than the applied version") until the
    counter caught up: policy changes silently stopped reaching the fleet."""
    now = time.time()
    for device_id in ("dev-a", "dev-b"):
        await store.record_presence(
            [HelloSeen(device_id, "c", now, "generic", "1", 1.0, {}, "rt", [], 0, 0)]
        )
    await store.put_policy_layer(_fleet_layer(10))
    given = await store.refresh_policies(None, now=now)
    await store.mark_policy_published([(p.device_id, p.version) for p in given])
    assert sorted(p.version for p in given) == [1, 2]
    # The backup's hub gave 1 and 2; the devices run versions 40 and 41 from before.
    ran = {"dev-a": 40, "dev-b": 41}
    await store.record_presence(
        [
            HeartbeatSeen(
                d, "c", now, 1.0, {}, policy={"version": v, "rejected_version": 0, "reason": ""}
            )
            for d, v in ran.items()
        ]
    )
    again = await store.refresh_policies(["dev-a"], now=now)  # dev-a's next hello
    assert [(p.device_id, p.version > 41) for p in again] == [("dev-a", True)]
    await store.put_policy_layer(_fleet_layer(20))  # and any change of policy
    changed = await store.refresh_policies(None, now=now)
    assert {p.device_id for p in changed} == {"dev-a", "dev-b"}
    assert min(p.version for p in changed) > max(p.version for p in again)
    # A device in step is not marked: nothing to send again.
    await store.mark_policy_published([(p.device_id, p.version) for p in changed])
    await store.record_presence(
        [
            HeartbeatSeen(
                p.device_id,
                "c",
                now,
                1.0,
                {},
                policy={"version": p.version, "rejected_version": 0, "reason": ""},
            )
            for p in changed
        ]
    )
    assert await store.refresh_policies(None, now=now) == []


async def test_a_device_claiming_the_last_version_cannot_stop_policy_for_the_fleet(
    store: HubStore,
) -> None:
    """The counter followed any version a device reported: one claiming 2**63 - 1 left
    no version to give, and every refresh failed, for every device."""
    now = time.time()
    for device_id in ("dev-a", "dev-b"):
        await store.record_presence(
            [HelloSeen(device_id, "c", now, "generic", "1", 1.0, {}, "rt", [], 0, 0)]
        )
    await store.put_policy_layer(_fleet_layer(10))
    given = await store.refresh_policies(None, now=now)
    await store.mark_policy_published([(p.device_id, p.version) for p in given])
    claim = {"version": 2**63 - 1, "rejected_version": 2**63 - 1, "reason": ""}
    await store.record_presence([HeartbeatSeen("dev-a", "c", now, 1.0, {}, policy=claim)])

    await store.put_policy_layer(_fleet_layer(20))
    changed = await store.refresh_policies(None, now=now)

    assert {p.device_id for p in changed} == {"dev-a", "dev-b"}
    assert max(p.version for p in changed) < 2**53 + 10


async def test_a_held_device_stays_offline_until_its_hold_ends(store: HubStore) -> None:
    """A hold marked the device offline, but its messages queued before the session
    ended came after and set it online again: work could go to a device held off."""
    now = time.time()
    hello = HelloSeen("dev-h", "c", now, "generic", "1", 1.0, {}, "rt", [], 1, 0)
    assert await store.record_presence([hello]) == [True]
    assert await store.hold_device("dev-h", now=now, until=now + 60)
    queued: list[PresenceEvent] = [
        HeartbeatSeen("dev-h", "c", now + 1, 1.0, {}),
        HelloSeen("dev-h", "c2", now + 2, "generic", "1", 1.0, {}, "rt", [], 1, 0),
    ]
    assert await store.record_presence(queued) == [False, False]
    held = await store.device("dev-h")
    assert held is not None
    assert not held.online
    # Once the hold has ended, the same messages bring it online (the control).
    later = HeartbeatSeen("dev-h", "c2", now + 61, 1.0, {})
    assert await store.record_presence([later]) == [True]
    back = await store.device("dev-h")
    assert back is not None
    assert back.online
