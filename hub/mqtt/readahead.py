"""Read every packet the broker has sent whenever the hub's MQTT socket is readable.

aiomqtt calls paho's `loop_read` when the socket is readable, and paho reads as many
packets as it has messages in flight (at least one). The hub subscribes to the whole
fleet and has few messages of its own in flight (heartbeats arrive at QoS 0), so it read
one device message per pass of the event loop, and Mosquitto writes each message as its
own TLS record, so no buffered record carried more. With thousands of devices the loop
made fewer passes than the fleet sent messages: their bytes queued in the socket (400 KB
seen) while the hub had CPU to spare, hellos waited there for seconds, and heartbeats
were stored late. Here, each wake-up reads until the socket has nothing more, within a
bound that keeps the event loop responsive.
"""

from __future__ import annotations

import select
from collections.abc import Callable

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

MAX_PACKETS_PER_WAKE = 2_000


def read_all_available(client: aiomqtt.Client) -> None:
    """Make `client` read every available packet each time its socket is readable."""
    paho = client._client  # aiomqtt keeps the paho client it drives here
    read_some: Callable[..., MQTTErrorCode] = paho.loop_read
    poller: select.poll | None = None
    polled = -1

    def loop_read(max_packets: int = 1) -> MQTTErrorCode:
        nonlocal poller, polled
        rc = read_some()
        for _ in range(MAX_PACKETS_PER_WAKE):
            sock = paho.socket()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
                return rc
            if sock.fileno() != polled:  # a new connection: watch its socket instead
                poller, polled = select.poll(), sock.fileno()
                poller.register(polled, select.POLLIN)
            assert poller is not None
            pending = getattr(sock, "pending", lambda: 0)()  # bytes TLS already decrypted
            if not pending and not poller.poll(0):
                return rc
            rc = read_some()
        return rc

    paho.loop_read = loop_read  # type: ignore[method-assign]
