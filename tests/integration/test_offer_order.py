"""Offers of model releases in the hub's store (a real SQLite file, a real PostgreSQL
database): numbered for the seal of each device that checks one, every number above
the last and above the clock's milliseconds, and what each offer holds read after its
number was taken (see hub/store/offers.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.models.rollouts import sealed_offer
from hub.store import HelloSeen, HubStore, StoredModel
from outpost import offerseal
from outpost.signing import Signed
from tests.databases import BACKENDS, database


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    s = HubStore(database(request, tmp_path))
    yield s
    s.close()


async def _hello(store: HubStore, device_id: str, *, sealed: bool) -> None:
    now = time.time()
    hello = HelloSeen(device_id, "c", now, "generic", "1", 1.0, {}, sealed_offers=sealed)
    await store.record_presence([hello])


async def test_devices_that_check_seals_get_numbers_that_only_grow(store: HubStore) -> None:
    await _hello(store, "dev-a", sealed=True)
    await _hello(store, "dev-b", sealed=True)
    await _hello(store, "dev-old", sealed=False)  # an agent from before seals
    before = time.time()

    # Numbered though no roll-out names them: as an empty offer sent to replace one.
    everyone = frozenset({"dev-a", "dev-b", "dev-old"})
    first = await store.offers_of(["dev-a", "dev-b", "dev-old"], now=before, always=everyone)
    second = await store.offers_of(  # a clock set back
        ["dev-b", "dev-a"], now=before - 3600, always=everyone
    )

    assert first["dev-old"].seq == 0
    numbers = [first["dev-a"].seq, first["dev-b"].seq, second["dev-a"].seq, second["dev-b"].seq]
    assert len(set(numbers)) == 4
    assert min(numbers) > int(before * 1000)  # past a backup's numbers, by the clock
    assert max(first["dev-a"].seq, first["dev-b"].seq) < min(
        second["dev-a"].seq, second["dev-b"].seq
    )
    # A device that goes back to an agent without seals gets none from its next hello on.
    await _hello(store, "dev-a", sealed=False)
    assert (await store.offers_of(["dev-a"], now=time.time(), always=everyone))["dev-a"].seq == 0


async def test_a_device_no_rollout_names_is_offered_nothing_and_takes_no_number(
    store: HubStore,
) -> None:
    """A ramp of hellos from devices with nothing to offer neither waits on the counter's
    lock nor uses numbers up; a device a roll-out names is numbered as before."""
    await _hello(store, "dev-b", sealed=True)
    assert await store.add_model(
        StoredModel("m", "1.0.0", "ab" * 32, 10, {}, b"doc", b"sig", 1.0, "t")
    )
    rollout = await store.create_rollout(
        name="m", version="1.0.0", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    assert [d.device_id for d in rollout.devices] == ["dev-b"]
    await _hello(store, "dev-a", sealed=True)  # after: no roll-out names it

    offers = await store.offers_of(["dev-a", "dev-b"], now=time.time())

    assert offers["dev-a"].seq == 0
    assert offers["dev-a"].releases == offers["dev-a"].shadows == []
    assert offers["dev-b"].seq > 0
    assert offers["dev-b"].releases == [(b"doc", b"sig")]
    # Nothing numbered dev-a: the next number follows dev-b's.
    after = await store.offers_of(["dev-a"], now=0.0, always=frozenset({"dev-a"}))
    assert after["dev-a"].seq == offers["dev-b"].seq + 1


async def test_the_sealed_offer_names_exactly_what_it_offers(store: HubStore) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    await _hello(store, "dev-a", sealed=True)
    assert await store.add_model(
        StoredModel("m", "1.0.0", "ab" * 32, 10, {}, b"doc", b"sig", 1.0, "t")
    )
    rollout = await store.create_rollout(
        name="m", version="1.0.0", selector={}, canary_share=1.0, by="t", now=time.time()
    )
    assert [d.device_id for d in rollout.devices] == ["dev-a"]

    offer = (await store.offers_of(["dev-a"], now=time.time()))["dev-a"]
    assert offer.releases == [(b"doc", b"sig")]
    body = sealed_offer(key, offer, time.time())
    assert body.seal is not None
    seal = offerseal.verify(
        key.public_key(),
        Signed(body.seal.document, body.seal.signature),
        "dev-a",
        [b"doc"],
        [],
    )
    assert seal.seq == offer.seq
    with pytest.raises(offerseal.SealError, match="releases offered are not the ones"):
        offerseal.verify(
            key.public_key(), Signed(body.seal.document, body.seal.signature), "dev-a", [], []
        )
