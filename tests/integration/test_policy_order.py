"""Two refreshes of one device's policy at once (a fleet-wide change through the API and
a device's own a moment later, on one replica or two) may publish out of version order:
the broker then kept the older policy, retained, while the store counted the newer one
as sent, and no later hello sent it again. The publisher now sends the newer one again,
last. On both back-ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.fleet.policies import PolicyPublisher
from hub.store import HelloSeen, HubStore
from hub.store.policy import Layer
from outpost import policy, wire
from outpost.signing import Signed
from tests.databases import BACKENDS, database

DEADLINE_S = 30.0
DEVICE = "dev-x"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubStore]:
    opened = HubStore(database(request, tmp_path))
    yield opened
    opened.close()


def _version(key: ed25519.Ed25519PrivateKey, payload: bytes) -> int:
    envelope = wire.decode(payload, kinds=wire.DOWN_KINDS, expected_kind="policy")
    body = envelope.body
    issued = policy.verify(key.public_key(), Signed(body.document, body.signature), DEVICE)
    return issued.version


async def _published(store: HubStore) -> bool:
    policy = await store.device_policy(DEVICE)
    return policy is not None and policy.published


async def test_a_policy_sent_after_a_newer_one_is_followed_by_the_newer_again(
    store: HubStore,
) -> None:
    now = time.time()
    await store.record_presence([HelloSeen(DEVICE, "c1", now, "default", "1.0", 10.0, {})])
    key = ed25519.Ed25519PrivateKey.generate()
    retained: list[int] = []  # versions in the order the broker took them
    calls = 0
    held = asyncio.Event()  # the first send's broker round trip, held by the test

    async def publish(topic: str, payload: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await held.wait()
        retained.append(_version(key, payload))

    publisher = PolicyPublisher(store, key, publish)
    await store.put_policy_layer(
        Layer("fleet", "fleet", {}, None, 0, {"heartbeat_interval": 30.0}, now, "op")
    )
    older = asyncio.create_task(publisher.refresh([DEVICE]))  # its send held
    async with asyncio.timeout(DEADLINE_S):
        while calls < 1:
            await asyncio.sleep(0.01)  # a poll with a deadline: the older one under way
    await store.put_policy_layer(
        Layer("own", "device", {}, DEVICE, 0, {"heartbeat_interval": 60.0}, now, "op")
    )
    assert await publisher.refresh([DEVICE]) == 1  # the newer one, sent first
    held.set()
    await older  # the older one lands last: the broker keeps it
    latest = await store.device_policy(DEVICE)
    assert latest is not None
    assert retained == [latest.version, latest.version - 1]

    running = asyncio.create_task(publisher.run())
    try:
        # The newer one again, and kept as published (after the broker took it: a read
        # between the two sees it sent but not yet marked).
        async with asyncio.timeout(DEADLINE_S):
            while not (retained[-1] == latest.version and await _published(store)):
                await asyncio.sleep(0.01)  # a poll with a deadline
        again = await store.device_policy(DEVICE)
        assert again is not None
        assert (again.version, again.published) == (latest.version, True)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


async def test_a_revoked_device_gets_no_new_version_and_is_no_drift(store: HubStore) -> None:
    """It never applies a policy again: a version given to it counted as drift for good,
    and OutpostPolicyDrift never cleared after the next fleet-wide change."""
    now = time.time()
    await store.record_presence(
        [
            HelloSeen("dev-kept", "c1", now, "default", "1.0", 10.0, {}),
            HelloSeen("dev-gone", "c2", now, "default", "1.0", 10.0, {}),
        ]
    )
    await store.revoke_device("dev-gone", now=now, by="op")
    await store.put_policy_layer(
        Layer("fleet", "fleet", {}, None, 0, {"heartbeat_interval": 30.0}, now, "op")
    )

    given = await store.refresh_policies(None, now=now)
    await store.mark_policy_published([(p.device_id, p.version) for p in given])

    assert [p.device_id for p in given] == ["dev-kept"]
    assert await store.policy_drift() == 1  # dev-kept has not applied it yet; dev-gone is out
