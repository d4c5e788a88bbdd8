"""The hub's MQTT client reads everything the broker sent each time its socket wakes it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from paho.mqtt.enums import MQTTErrorCode

from hub.mqtt import readahead
from hub.mqtt.readahead import read_all_available


class OnePacketPerCall:
    """Paho's read as the hub met it: one packet (here, a byte) per `loop_read` call."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self.calls = 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self.calls += 1
        if self.sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        try:
            if not self.sock.recv(1):
                self.sock = None  # as paho does when the broker closed the connection
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
        except BlockingIOError:
            pass
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def socket(self) -> socket.socket | None:
        return self.sock


class Client:
    def __init__(self, paho: OnePacketPerCall) -> None:
        self._client = paho


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    broker, hub = socket.socketpair()
    hub.setblocking(False)
    yield broker, hub
    broker.close()
    hub.close()


def _wrapped(hub: socket.socket) -> OnePacketPerCall:
    paho = OnePacketPerCall(hub)
    read_all_available(Client(paho))  # type: ignore[arg-type]
    return paho


def test_one_wake_reads_every_packet_waiting(pair: tuple[socket.socket, socket.socket]) -> None:
    broker, hub = pair
    paho = _wrapped(hub)
    broker.sendall(b"x" * 50)

    paho.loop_read()

    assert paho.calls == 50
    with pytest.raises(BlockingIOError):
        hub.recv(1)


def test_a_wake_with_one_packet_reads_once(pair: tuple[socket.socket, socket.socket]) -> None:
    broker, hub = pair
    paho = _wrapped(hub)
    broker.sendall(b"x")

    paho.loop_read()

    assert paho.calls == 1


def test_one_wake_reads_at_most_its_bound(
    pair: tuple[socket.socket, socket.socket], monkeypatch: Any
) -> None:
    monkeypatch.setattr(readahead, "MAX_PACKETS_PER_WAKE", 10)
    broker, hub = pair
    paho = _wrapped(hub)
    broker.sendall(b"x" * 50)

    paho.loop_read()

    assert paho.calls == 11  # the first read and ten more: the event loop gets its turn
    assert len(hub.recv(100)) == 39


def test_a_closed_connection_ends_the_reading(pair: tuple[socket.socket, socket.socket]) -> None:
    broker, hub = pair
    paho = _wrapped(hub)
    broker.sendall(b"x" * 5)
    broker.close()

    assert paho.loop_read() == MQTTErrorCode.MQTT_ERR_CONN_LOST
    assert paho.calls == 6  # five packets, then the end of the connection
