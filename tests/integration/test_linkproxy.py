"""The link controller the fault tests rely on does what it says, against a loopback echo."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.linkproxy import LinkProxy, Shape


@pytest.fixture
async def proxy() -> AsyncIterator[LinkProxy]:
    echoes: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        echoes.add(task)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    link = LinkProxy(server.sockets[0].getsockname()[1], seed=1)
    await link.start()
    yield link
    await link.close()
    server.close()
    await server.wait_closed()
    await asyncio.gather(*echoes)


async def _round_trip(link: LinkProxy, size: int) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
    began = time.monotonic()
    writer.write(b"x" * size)
    got = await reader.readexactly(size)
    writer.close()
    return got, time.monotonic() - began


async def test_delay_applies_each_way_and_the_cap_paces_bytes(proxy: LinkProxy) -> None:
    proxy.shape(Shape(delay_s=0.3))
    _, took = await _round_trip(proxy, 10)
    assert 0.6 <= took < 5  # the floor is the property; the ceiling only catches a hang

    proxy.shape(Shape(rate_bytes_per_s=40_000))
    got, took = await _round_trip(proxy, 40_000)  # 1 s each way, the two overlapping
    assert got == b"x" * 40_000
    assert 0.95 <= took < 6


async def test_a_down_link_refuses_until_up_and_a_paused_one_holds_bytes(
    proxy: LinkProxy,
) -> None:
    proxy.down()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await reader.read() == b""  # reset or closed at once
    writer.close()
    proxy.up()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.pause()
    writer.write(b"held")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)  # nothing passes while paused
    proxy.resume()
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"held"
    writer.close()


async def test_corruption_flips_a_byte_and_resets_end_the_connection(proxy: LinkProxy) -> None:
    proxy.shape(Shape(corrupt_rate=1.0))
    got, _ = await _round_trip(proxy, 100)
    assert got != b"x" * 100  # flipped on the way out and on the way back
    assert proxy.faults == 2

    proxy.shape(Shape(reset_rate=1.0))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"lost")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
