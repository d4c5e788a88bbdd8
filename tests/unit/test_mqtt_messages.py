"""`outpost.mqttmessages.Messages` against a stand-in for aiomqtt's queue and disconnect
future (the real client and broker: tests/integration/test_mqtt_io.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import aiomqtt
import pytest

from outpost.mqttmessages import ENDED, Messages


def _client() -> tuple[Any, asyncio.Queue[str], asyncio.Future[None]]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    return cast(aiomqtt.Client, SimpleNamespace(_queue=queue, _disconnected=ended)), queue, ended


async def _read(messages: Messages) -> Any:
    """The next message: a str here, where aiomqtt's would be a Message."""
    return await anext(messages)


async def test_messages_queued_before_the_end_are_read_before_it_is_raised() -> None:
    client, queue, ended = _client()
    queue.put_nowait("a")
    queue.put_nowait("b")
    ended.set_exception(aiomqtt.MqttError("broker gone"))
    messages = Messages(client)
    assert [await _read(messages), await _read(messages)] == ["a", "b"]
    with pytest.raises(aiomqtt.MqttError, match=ENDED) as raised:
        await anext(messages)
    assert str(raised.value.__cause__) == "broker gone"


async def test_a_message_and_the_end_in_one_pass_give_the_message_and_no_stray_cancel() -> None:
    """The end's wake-up runs after the message was read, while the reader is busy
    elsewhere: it must not be cancelled there. The next read raises the end."""
    client, queue, ended = _client()
    messages = Messages(client)

    async def read_then_work() -> str:
        message: str = await _read(messages)
        for _ in range(3):  # busy elsewhere: the end's wake-up runs meanwhile
            await asyncio.sleep(0)
        return message

    reader = asyncio.create_task(read_then_work())
    await asyncio.sleep(0)  # parked on the empty queue
    queue.put_nowait("last")
    ended.set_result(None)  # a clean disconnect, in the same pass
    assert await reader == "last"
    with pytest.raises(aiomqtt.MqttError, match=ENDED):
        await anext(messages)


async def test_the_readers_own_cancel_is_a_cancel_and_loses_no_message() -> None:
    client, queue, ended = _client()
    messages = Messages(client)
    reader = asyncio.create_task(anext(messages))
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put_nowait("kept")
    assert await _read(messages) == "kept"
    assert not ended.done()


async def test_a_cancel_and_the_end_together_stay_a_cancel() -> None:
    client, _, ended = _client()
    messages = Messages(client)
    reader = asyncio.create_task(anext(messages))
    await asyncio.sleep(0)
    ended.set_result(None)
    reader.cancel()  # the caller's, beside the end's own
    with pytest.raises(asyncio.CancelledError):
        await reader
