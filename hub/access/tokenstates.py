"""What the hub knows of the API tokens it issued: each token's state (active, revoked,
unknown), read from the database and kept in memory, so that a request does not wait on
the database to learn it.

A revocation made through this hub (`TokenStates.revoke`) is refused by every route of
the hub before the revocation is answered. One made elsewhere (another replica on the
same PostgreSQL database, or `outpost-hub token revoke` run beside the hub on its
database) is seen when the state is next read: a state is trusted for at most
`RECHECK_S` after the read that gave it began, so such a revocation is refused within
`RECHECK_S` of its commit. A revoked token stays revoked: a read that began before the
revocation cannot bring it back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, Protocol

State = Literal["active", "revoked", "unknown"]
# The bound on how late a revocation made elsewhere takes effect here; each token in use
# costs one database read per interval instead of one per request (0: read every time).
RECHECK_S = 1.0
MAX_TOKENS = 4096  # states kept at most; the longest-unread go first


class TokenRecords(Protocol):
    """Where the grants of issued tokens are recorded: the hub's store."""

    async def api_token_state(self, jti: str) -> str: ...

    async def revoke_api_token(self, jti: str, *, now: float) -> str: ...


class TokenStates:
    """The states of the tokens presented to this hub, refreshed from the database."""

    def __init__(
        self,
        store: TokenRecords,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._recheck_s = recheck_s
        self._clock = clock
        self._known: dict[str, tuple[State, float]] = {}  # jti -> (state, read began)

    async def state(self, jti: str) -> State:
        """The token's state: from memory if read within `recheck_s`, else from the
        database (active and revoked are then kept; unknown is not, so a token recorded
        later is not refused for it)."""
        known = self._known.get(jti)
        if known is not None and (
            known[0] == "revoked" or self._clock() - known[1] < self._recheck_s
        ):
            return known[0]
        began = self._clock()
        state = await self._store.api_token_state(jti)
        if state not in ("active", "revoked"):
            return "unknown"
        return self._remember(jti, "active" if state == "active" else "revoked", began)

    async def revoke(self, jti: str, *, now: float) -> str:
        """Revoke the token in the database and here: "revoked", "already revoked" or
        "unknown". Shielded: a caller that goes away while the database commits still
        leaves this hub refusing the token."""
        return await asyncio.shield(self._revoke(jti, now))

    async def _revoke(self, jti: str, now: float) -> str:
        outcome = await self._store.revoke_api_token(jti, now=now)
        if outcome != "unknown":
            self._remember(jti, "revoked", self._clock())
        return outcome

    def _remember(self, jti: str, state: State, began: float) -> State:
        previous = self._known.pop(jti, None)
        if previous is not None and previous[0] == "revoked":
            state = "revoked"  # final: a read that began before the revocation is stale
        elif len(self._known) >= MAX_TOKENS:
            self._known.pop(next(iter(self._known)))  # dicts keep order: longest unread
        self._known[jti] = (state, began)
        return state
