"""API token states kept in memory (hub/access/tokenstates.py), on a real SQLite file and
a real PostgreSQL database: a token is accepted until it is revoked; a revocation through
this hub is refused at once, by every route; one made elsewhere (another replica on the
same database, or the CLI) within RECHECK_S; and a revoked token never comes back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access import apitokens
from hub.access.tokenstates import RECHECK_S, TokenStates
from hub.app import Hub
from hub.store import HubStore
from tests.api_client import ApiClient
from tests.databases import BACKENDS, database, hub_backend

__all__ = ["hub_backend"]  # the fixture hubs of this module run on both back-ends


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[HubStore, HubStore]]:
    """This hub's store and another on the same database: another replica's, or the one
    `outpost-hub token revoke` opens."""
    where = database(request, tmp_path)
    here, elsewhere = HubStore(where), HubStore(where)
    yield here, elsewhere
    here.close()
    elsewhere.close()


async def issued(store: HubStore) -> str:
    """Record a token's grant, as `outpost-hub token create` does; its jti."""
    _, principal = apitokens.mint(
        ed25519.Ed25519PrivateKey.generate(), role="viewer", subject="tester", ttl=600
    )
    await store.add_api_token(apitokens.grant_record(principal))
    return principal.jti


async def test_a_revocation_through_this_hub_is_refused_at_once(
    stores: tuple[HubStore, HubStore],
) -> None:
    here, _ = stores
    clock = Clock()
    states = TokenStates(here, clock=clock)
    jti = await issued(here)

    before = await states.state(jti)
    outcome = await states.revoke(jti, now=time.time())
    after = await states.state(jti)  # the clock has not moved: no new read is due

    assert before == "active"
    assert outcome == "revoked"
    assert after == "revoked"
    assert await here.api_token_state(jti) == "revoked"
    assert await states.revoke(jti, now=time.time()) == "already revoked"


async def test_a_revocation_elsewhere_is_refused_within_the_recheck_bound(
    stores: tuple[HubStore, HubStore],
) -> None:
    here, elsewhere = stores
    clock = Clock()
    states = TokenStates(here, clock=clock)
    jti = await issued(here)
    assert await states.state(jti) == "active"

    assert await elsewhere.revoke_api_token(jti, now=time.time()) == "revoked"
    clock.now += RECHECK_S * 0.99
    within = await states.state(jti)  # trusted: read less than RECHECK_S ago
    clock.now += RECHECK_S * 0.01
    bound = await states.state(jti)  # RECHECK_S after the read began: read again

    assert within == "active"
    assert bound == "revoked"


async def test_a_read_begun_before_a_revocation_cannot_bring_the_token_back(
    stores: tuple[HubStore, HubStore],
) -> None:
    here, _ = stores

    class Paused:
        """This hub's store, whose token reads hand their answer back only when let."""

        def __init__(self) -> None:
            self.read = asyncio.Event()
            self.answer = asyncio.Event()

        async def api_token_state(self, jti: str) -> str:
            state = await here.api_token_state(jti)
            self.read.set()
            await self.answer.wait()
            return state

        async def revoke_api_token(self, jti: str, *, now: float) -> str:
            return await here.revoke_api_token(jti, now=now)

    paused = Paused()
    states = TokenStates(paused, clock=Clock())
    jti = await issued(here)

    reading = asyncio.create_task(states.state(jti))
    await paused.read.wait()  # it read "active" from the database
    await states.revoke(jti, now=time.time())
    paused.answer.set()

    assert await reading == "revoked"
    assert await states.state(jti) == "revoked"


async def test_an_unknown_token_is_not_kept_as_unknown(stores: tuple[HubStore, HubStore]) -> None:
    here, _ = stores
    states = TokenStates(here, clock=Clock())
    _, principal = apitokens.mint(
        ed25519.Ed25519PrivateKey.generate(), role="viewer", subject="tester", ttl=600
    )

    before = await states.state(principal.jti)
    await here.add_api_token(apitokens.grant_record(principal))
    after = await states.state(principal.jti)

    assert before == "unknown"
    assert after == "active"


async def test_the_api_accepts_a_token_until_revoked_then_every_route_refuses_it(
    hub: Hub, api: ApiClient
) -> None:
    admin = await api.token("admin", subject="alice")
    created = await api.call(
        "POST", "/api/v1/tokens", token=admin, body={"subject": "dash", "role": "viewer"}
    )
    token, jti = created.body["token"], created.body["grant"]["jti"]
    routes = ["/api/v1/devices", "/api/v1/whoami", "/api/v1/devices?limit=1"]

    before = [await api.call("GET", path, token=token) for path in routes * 2]
    revoked = await api.call("POST", f"/api/v1/tokens/{jti}/revoke", token=admin)
    after = [await api.call("GET", path, token=token) for path in routes]

    assert [r.status for r in before] == [200] * len(before)
    assert revoked.status == 200
    assert [r.status for r in after] == [401] * len(after)
    assert {r.error["message"] for r in after} == {"token revoked"}
    assert await hub.parts.store.api_token_state(jti) == "revoked"


async def _snapshots(response: aiohttp.ClientResponse, count: int | None = None) -> list[float]:
    """Read until `count` more snapshots arrived (None: until the stream ends); fewer if
    the stream ends first. When each was built: its `at`."""
    built: list[float] = []
    event = b""
    while count is None or len(built) < count:
        line = await response.content.readline()
        if not line:
            break  # the hub ended the stream
        if line.startswith(b"event: "):
            event = line
        elif line.startswith(b"data: ") and event == b"event: snapshot\n":
            built.append(json.loads(line.removeprefix(b"data: "))["at"])
    return built


async def test_a_live_stream_ends_once_its_token_is_revoked(hub: Hub, api: ApiClient) -> None:
    admin = await api.token("admin", subject="alice")
    grants = [
        await api.call(
            "POST", "/api/v1/tokens", token=admin, body={"subject": name, "role": "viewer"}
        )
        for name in ("wall-screen", "laptop")
    ]
    (revoked, revoked_jti), (kept, _) = ((g.body["token"], g.body["grant"]["jti"]) for g in grants)
    async with aiohttp.ClientSession() as session:

        def open_stream(token: str) -> Any:
            return session.get(
                api.url + "/api/v1/stream",
                headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
                ssl=api._context,
            )

        async with open_stream(revoked) as ending, open_stream(kept) as going_on:
            assert (ending.status, going_on.status) == (200, 200)
            assert len(await asyncio.wait_for(_snapshots(ending, 2), 30)) == 2
            assert len(await asyncio.wait_for(_snapshots(going_on, 2), 30)) == 2
            answer = await api.call("POST", f"/api/v1/tokens/{revoked_jti}/revoke", token=admin)
            answered = time.time()
            assert answer.status == 200
            # Snapshots built before the revocation was answered may still come (on their
            # way, or ticks while a slow machine served the request: not counted, they
            # depend on its speed), none built after it, then the end of the stream; the
            # other token's stream goes on.
            after = await asyncio.wait_for(_snapshots(ending), 30)
            assert [at for at in after if at >= answered] == []
            assert len(await asyncio.wait_for(_snapshots(going_on, 3), 30)) == 3
