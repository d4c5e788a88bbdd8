"""Write an MQTT client's packets the moment they are made, not a loop pass or two later.

aiomqtt drives paho from the event loop: when paho has a packet to send (a publish, the
PUBACK of a message read), it asks aiomqtt to watch the socket for writability, which
aiomqtt does with `call_soon_threadsafe(add_writer)` (paho may ask from the thread that
connects); the packet leaves once the loop has run that, polled the socket and called
back. Meanwhile whatever else was ready runs first: on the hub, a task's assignment
waited behind the rest of the API request that made it (its audit entry), 0.3 ms of a
task's few milliseconds end to end, and as much again for its result on the way back.

So when paho asks from the event loop's own thread, and not from inside one of its
callbacks (the case its own loop-less mode guards against too: paho/mqtt/client.py,
`_packet_queue`), the packets are written there and then, as the writer would have
written them, errors included. What the socket does not take at once (a full send
buffer) is left to aiomqtt's writer as before.
"""

from __future__ import annotations

import threading
from typing import Any

import aiomqtt
from paho.mqtt import client as mqtt


def write_at_once(client: aiomqtt.Client) -> None:
    """Make `client` write each packet as paho queues it (see the module's doc). Call on
    the event loop's thread, before the client connects."""
    paho = client._client  # aiomqtt keeps the paho client it drives here
    register_write = paho.on_socket_register_write  # aiomqtt's: add_writer, via the loop
    assert register_write is not None
    loop_thread = threading.get_ident()

    def write_now(paho_client: mqtt.Client, userdata: Any, sock: Any) -> None:
        in_callback = paho._in_callback_mutex  # held while paho runs a user callback
        if threading.get_ident() != loop_thread or not in_callback.acquire(blocking=False):
            register_write(paho_client, userdata, sock)
            return
        in_callback.release()
        try:
            paho_client.loop_write()
        except Exception as exc:  # as aiomqtt's writer: a broken connection ends it
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)
            return
        if paho_client.socket() is None:  # the write failed and paho closed the socket
            return
        if paho_client.want_write():  # the socket took only part: its writer does the rest
            register_write(paho_client, userdata, sock)

    paho.on_socket_register_write = write_now
