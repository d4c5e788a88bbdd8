"""Ids asked for while the worker is busy are taken together, once, in order."""

from __future__ import annotations

import asyncio

from hub.fleet.wanted import Wanted


async def test_asks_coalesce_until_taken() -> None:
    wanted = Wanted()
    taking = asyncio.ensure_future(wanted.take())
    await asyncio.sleep(0)  # let it wait: nothing asked yet
    assert not taking.done()
    wanted.add(["b", "a"])
    wanted.add(["a", "c"])
    assert await asyncio.wait_for(taking, 1) == ["a", "b", "c"]
    again = asyncio.ensure_future(wanted.take())
    await asyncio.sleep(0)  # let it wait again: nothing asked since
    assert not again.done()  # taken ones are forgotten
    wanted.add(["d"])
    assert await asyncio.wait_for(again, 1) == ["d"]
