"""Write an MQTT client's packets the moment they are made, not a loop pass or two later.

aiomqtt drives paho from the event loop: when paho has a packet to send (a publish, the
PUBACK of a message read), it asks aiomqtt to watch the socket for writability, which
aiomqtt does with `call_soon_threadsafe(add_writer)` (paho may ask from the thread that
connects); the packet leaves once the loop has run that, polled the socket and called
back. Meanwhile whatever else was ready runs first: a task's result waited 0.14 ms of
its few milliseconds end to end (and the hub's assignment of it 0.3 ms, behind the rest
of the API request that made it).

So when paho asks from the event loop's own thread, not from inside one of its callbacks
(the case its own loop-less mode guards against too: paho/mqtt/client.py,
`_packet_queue`) nor from a read (the PUBACKs of the messages a read takes go together
after it), the packets are written there and then, as the writer would have written
them, errors included. What the socket does not take at once (a full send buffer) is
left to the loop's writer. The agent's client does this for every packet; the hub's
only for the publishes made inside `at_once()`, its task assignments (hub/mqtt/link.py
says why).

The writer is added and removed here too, not by aiomqtt: its queued add or remove,
aimed at the socket's number, could reach another socket given that number after paho
closed its own (see `register`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import aiomqtt
from paho.mqtt import client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_MARKED: ContextVar[bool] = ContextVar("outpost_mqtt_write_at_once", default=False)


@contextlib.contextmanager
def at_once() -> Iterator[None]:
    """The packets queued inside, by this task, are written at once by a client set up
    with `write_at_once(client, only_marked=True)`."""
    token = _MARKED.set(True)
    try:
        yield
    finally:
        _MARKED.reset(token)


def write_at_once(client: aiomqtt.Client, *, only_marked: bool = False) -> None:
    """Make `client` write each packet as paho queues it (see the module's doc), or with
    `only_marked` each one queued inside `at_once()`. Call on the event loop's thread,
    before the client connects."""
    paho = client._client  # aiomqtt keeps the paho client it drives here
    loop_thread = threading.get_ident()
    loop = asyncio.get_running_loop()
    read = paho.loop_read
    publish = paho.publish
    reading = False

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        # What a read queues (a PUBACK for each QoS 1 message) waits for the writer: a
        # read that takes many messages then writes their acks together, after it.
        nonlocal reading
        reading = True
        try:
            return read(max_packets)
        finally:
            reading = False

    def may_write_now() -> bool:
        if reading or (only_marked and not _MARKED.get()) or threading.get_ident() != loop_thread:
            return False
        in_callback = paho._in_callback_mutex  # held while paho runs a user callback
        if not in_callback.acquire(blocking=False):
            return False
        in_callback.release()
        return True

    def write() -> bool:
        """Write what paho holds, as aiomqtt's writer would; False if that ended the
        connection."""
        try:
            paho.loop_write()
        except Exception as exc:  # as aiomqtt's writer: a broken connection ends it
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)
            return False
        return paho.socket() is not None  # None: the write failed and paho closed it

    def watch(sock: Any) -> None:
        """Have the loop write what paho holds once `sock` takes it (on the loop's
        thread), if paho still wants that on this socket."""
        fd = sock.fileno()
        if fd >= 0 and paho.socket() is sock and paho.want_write():
            loop.add_writer(fd, write)

    def register(sock: Any) -> None:
        # In place of aiomqtt's, which asks the loop with `call_soon_threadsafe` from any
        # thread, the descriptor's number taken then: asked from the loop's own thread,
        # the writer is added at once; from the thread that connects, later, and only
        # if the same socket is still open and wants writing (a queued add or remove
        # acting on the number alone reached whatever socket had that number by then:
        # an HTTPS connection the agent's renewal opened, its connect then never seen).
        if sock is None:  # paho reads its socket twice: closed in between by the loop
            return
        if threading.get_ident() == loop_thread:
            watch(sock)
        else:
            loop.call_soon_threadsafe(watch, sock)

    def write_now(paho_client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if not may_write_now():
            register(sock)
            return
        if write() and paho_client.want_write():  # the socket took only part
            register(sock)  # the writer does the rest

    def publish_now(*args: Any, **kwargs: Any) -> mqtt.MQTTMessageInfo:
        # paho asks for the writer only when none is asked for yet: a publish queued
        # behind packets already waiting for it (a read's PUBACKs, an unmarked publish)
        # is written here, with them, in order. What the socket does not take stays for
        # the writer already asked for.
        info = publish(*args, **kwargs)
        if paho.socket() is not None and paho.want_write() and may_write_now():
            write()
        return info

    def unwatch(sock: Any, fd: int) -> None:
        if fd >= 0 and sock.fileno() == fd:  # still open: the number is still its own
            loop.remove_writer(fd)

    def unregister(paho_client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Removed at once on the loop's thread (as paho closes a socket: before its
        # number can be reused), and any add asked for before from another thread then
        # finds nothing to write and adds nothing: no writer left called on every
        # pass with nothing to write (a core at 100 %).
        # From another thread, a socket paho then closes leaves the number registered
        # (not removed: it may be another socket's by then); only `connect` on a client
        # that was connected closes one there, and the agent and the hub make a new
        # client for each connection.
        if sock is None:
            return
        fd = sock.fileno()
        if threading.get_ident() == loop_thread:
            unwatch(sock, fd)
        else:
            loop.call_soon_threadsafe(unwatch, sock, fd)

    paho.on_socket_register_write = write_now
    paho.on_socket_unregister_write = unregister
    paho.loop_read = loop_read  # type: ignore[method-assign]
    paho.publish = publish_now  # type: ignore[method-assign]
