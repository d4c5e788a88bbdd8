"""Presence applied as one batch gives the same registry as the same events applied one
by one, on both back-ends.

`record_presence` reads a batch's device rows once and follows them in memory while it
works out each event's news, then writes in bulk (hub/store/presence.py). Random runs of
hellos, heartbeats (some reporting policy versions) and lost connections, several per
device and from old and new connections, over enrolled, revoked and unknown devices,
must leave the same rows, the same online flips and the same events in the same order
as applying each event alone."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hub.store import ConnectionLost, HeartbeatSeen, HelloSeen, HubStore, PresenceEvent
from hub.store.sql import Sql
from tests.databases import BACKENDS
from tests.support import enrolled_device

DEVICES = ["dev-000000000001", "dev-000000000002", "dev-000000000003"]
UNKNOWN = "dev-00000000000f"  # says hello without an enrollment (a restored database)
REVOKED = DEVICES[2]
CONNS = ["c1", "c2", "c3"]


def random_run(rng: random.Random, length: int, start: float) -> list[PresenceEvent]:
    run: list[PresenceEvent] = []
    for n in range(length):
        device = rng.choice([*DEVICES, UNKNOWN])
        conn = rng.choice(CONNS)
        now = start + n
        kind = rng.random()
        if kind < 0.3:
            run.append(HelloSeen(device, conn, now, "generic", "1.0", 5.0, {"cores": 1}))
        elif kind < 0.75:
            policy = None
            if rng.random() < 0.5:
                policy = {
                    "version": rng.randint(0, 4),
                    "rejected_version": rng.randint(0, 4),
                    "reason": f"reason {n}",
                }
            load = {"cpu_percent": float(n)}
            run.append(HeartbeatSeen(device, conn, now, 5.0, load, policy=policy))
        else:
            run.append(ConnectionLost(device, conn, now))
    return run


def prepare(db: Sql, now: float) -> None:
    with db.write():
        for device_id in DEVICES:
            db.execute(
                """INSERT INTO device_policy (device_id, version, digest, document, published,
                       issued_at) VALUES (?, 3, 'd', '{}', 1, ?)""",
                (device_id, now),
            )
        db.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ?", (now, REVOKED))


def registry(db: Sql) -> dict[str, Any]:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in db.execute(sql).fetchall()]

    return {
        "devices": rows(
            "SELECT device_id, online, conn, last_seen, load, agent_version FROM devices "
            "ORDER BY device_id"
        ),
        "policy": rows(
            "SELECT device_id, applied_version, rejected_version, reason FROM device_policy "
            "ORDER BY device_id"
        ),
        # Presence's events: enrollment's carry the wall clock of each store's setup.
        "events": rows(
            "SELECT device_id, at, kind, detail FROM device_events WHERE kind <> 'enrolled' "
            "ORDER BY id"
        ),
    }


async def opened(request: pytest.FixtureRequest, folder: Path, now: float) -> HubStore:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_server").new_database()
        store = HubStore(url)
    else:
        folder.mkdir()
        store = HubStore(folder / "hub.db")
    for device_id in DEVICES:
        await store.add_device(enrolled_device(device_id))
    await store.run(prepare, now)
    return store


@pytest.fixture(params=BACKENDS)
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[float], Any]:
    async def make(now: float) -> tuple[HubStore, HubStore]:
        return (
            await opened(request, tmp_path / "batched", now),
            await opened(request, tmp_path / "alone", now),
        )

    return make


@pytest.mark.parametrize("seed", range(6))
async def test_a_batch_leaves_what_its_events_one_by_one_leave(
    two_stores: Callable[[float], Any], seed: int
) -> None:
    now = time.time()
    batched, alone = await two_stores(now)
    try:
        rng = random.Random(seed)
        for round_ in range(4):
            run = random_run(rng, 40, now + 100 * round_)
            flips = await batched.record_presence(run)
            one_by_one = [(await alone.record_presence([e]))[0] for e in run]
            assert flips == one_by_one
        got, want = await batched.run(registry), await alone.run(registry)
        assert got == want
        # The runs did exercise what matters: flips both ways, policy news, the unknown
        # device registered, the revoked one never online.
        kinds = {e[2] for e in got["events"]}
        assert {"online", "offline"} <= kinds
        assert {"policy_applied", "policy_refused"} & kinds
        devices = {d[0]: d for d in got["devices"]}
        assert UNKNOWN in devices
        assert devices[REVOKED][1] == 0
    finally:
        batched.close()
        alone.close()
