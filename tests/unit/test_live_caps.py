"""The live feed's caps: per token subject, and slots kept for operators and admins."""

from __future__ import annotations

import contextlib

import pytest

from hub.api.live import FeedFullError, LiveFeed


async def _snapshot() -> bytes:
    return b"{}"


async def test_viewers_leave_the_reserved_slots_to_operators() -> None:
    feed = LiveFeed(_snapshot, interval=60, max_listeners=6, per_subject=2, reserved=2)
    async with contextlib.AsyncExitStack() as stack:
        for subject in ("a", "a", "b", "b"):
            await stack.enter_async_context(feed.listen(subject))
        with pytest.raises(FeedFullError, match="4 streams are open"):
            await stack.enter_async_context(feed.listen("c"))
        await stack.enter_async_context(feed.listen("ops", privileged=True))
        with pytest.raises(FeedFullError, match="this token has 2 streams"):
            await stack.enter_async_context(feed.listen("a", privileged=True))
        await stack.enter_async_context(feed.listen("admin", privileged=True))
        with pytest.raises(FeedFullError, match="6 streams are open"):
            await stack.enter_async_context(feed.listen("admin2", privileged=True))
        assert feed.listeners == 6
    assert feed.listeners == 0
    async with feed.listen("c"):  # closed streams free their slots and subjects
        assert feed.listeners == 1
        await feed.close()
