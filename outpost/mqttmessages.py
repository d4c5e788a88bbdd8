"""An MQTT client's messages, each read in one pass of the event loop, not three.

aiomqtt's iterator makes a task of every `queue.get()` and waits on it beside the
client's disconnect future: the task's first step, its wake-up, the wait's callback and
then the reader's own wake-up, for each message (0.1-0.15 ms of a task's few
milliseconds end to end, on each side), and the same again under load, where the
message was already queued. Here a queued message is taken at once; else the reader
waits on the queue itself, and a disconnect that comes first cancels that wait, which
becomes the `MqttError` aiomqtt raises. As with aiomqtt, messages queued before the
disconnect are read before it is raised.
"""

from __future__ import annotations

import asyncio

import aiomqtt

ENDED = "Disconnected during message iteration"  # aiomqtt's words


class Messages:
    """Iterate over `client`'s messages until its connection ends (`MqttError`);
    `len()` is how many are queued. Read by one task at a time."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._queue = client._queue  # aiomqtt's queue (or the `queue_type` it was given)
        self._disconnected = client._disconnected  # done when the connection ends

    def __aiter__(self) -> Messages:
        return self

    def __len__(self) -> int:
        return self._queue.qsize()

    async def __anext__(self) -> aiomqtt.Message:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        if self._disconnected.done():
            raise self._ended()
        reader = asyncio.current_task()
        assert reader is not None
        waiting, woken = True, False

        def wake(_: asyncio.Future[None]) -> None:
            # Scheduled when the connection ends; it may run after the wait below ended
            # (a message came first): then it must not cancel the reader elsewhere.
            nonlocal woken
            if waiting:
                woken = True
                reader.cancel()

        self._disconnected.add_done_callback(wake)
        try:
            return await self._queue.get()
        except asyncio.CancelledError:
            if not woken or reader.uncancel() > 0:
                raise  # the reader's own cancel (too)
        finally:
            waiting = False
            self._disconnected.remove_done_callback(wake)
        # The connection ended as this waited: a message queued meanwhile comes first.
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            raise self._ended()  # noqa: B904 - its cause is the connection's end

    def _ended(self) -> aiomqtt.MqttError:
        """aiomqtt's error for the end, caused by the connection's (None: a clean one)."""
        error = aiomqtt.MqttError(ENDED)
        if not self._disconnected.cancelled():
            error.__cause__ = self._disconnected.exception()  # and hides any context
        return error
