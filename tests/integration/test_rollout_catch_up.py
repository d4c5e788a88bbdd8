"""Roll-out moves made by another process reach connected devices without a hello.

`outpost-hub device revoke` beside the running hub ("works with the hub running or not")
revokes the last canary a roll-out waits on: the store moves the roll-out on and marks
the rest `released`, in the CLI's process. The hub's leader finds such moves (they are
stamped in the database) and sends the devices their release, once each."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from hub import cli
from hub.app import Hub
from hub.store import StoredModel
from outpost import wire
from tests.support import add_device, eventually

IDS = ["dev-0000000000a1", "dev-0000000000a2", "dev-0000000000a3", "dev-0000000000a4"]


async def test_a_revoke_by_the_cli_beside_the_hub_releases_the_rest(hub: Hub) -> None:
    store, rollouts = hub.parts.store, hub.parts.rollouts
    for device_id in IDS:
        await add_device(hub, device_id)
    sent: Counter[str] = Counter()
    publish = rollouts._publish

    async def recording(topic: str, payload: bytes) -> None:  # the real publish, counted
        sent[topic] += 1
        await publish(topic, payload)

    rollouts._publish = recording
    assert await store.add_model(
        StoredModel("m", "1", "ab" * 32, 10, {}, b"doc 1", b"sig", 1.0, "t")
    )
    rollout = await rollouts.start_rollout(
        name="m", version="1", selector={}, canary_share=0.5, by="t"
    )
    assert [d.device_id for d in rollout.devices if d.stage == "canary"] == IDS[:2]
    canary = wire.down_topic(IDS[0], "models")

    async def canaries_sent() -> bool:
        return all(sent[wire.down_topic(d, "models")] for d in IDS[:2])

    await eventually(canaries_sent, timeout=60, what="the canaries sent their release")
    await rollouts.on_state(IDS[0], wire.ModelState(name="m", version="1", state="active"))

    done = await asyncio.to_thread(
        cli.main, ["device", "revoke", "--data", str(hub.paths.root), IDS[1]]
    )

    assert done == 0
    found = await store.rollout(rollout.id)
    assert found is not None
    assert {d.device_id: d.state for d in found.devices}[IDS[2]] == "released"
    rest = [wire.down_topic(d, "models") for d in IDS[2:]]

    async def released() -> bool:
        return all(sent[topic] for topic in rest)

    await eventually(released, timeout=60, what="the rest sent their release")
    # A halt made elsewhere too (here: the store, past the service): the devices that
    # were given the release are sent what replaces it. By then the moves above were
    # read again, and not sent again.
    await store.halt_rollout(rollout.id, "halted elsewhere", now=time.time())

    async def withdrawn() -> bool:
        return all(sent[topic] >= 2 for topic in [canary, *rest])

    await eventually(withdrawn, timeout=60, what="the released devices sent the halt")
    assert [sent[topic] for topic in [canary, *rest]] == [2, 2, 2]  # each move, once
