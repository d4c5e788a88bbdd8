# mypy: disable-error-code="no-untyped-call"
"""paho's `Properties` made cheap (outpost/mqttprops.py): packets packed and read with it
carry exactly the properties, errors and tables that paho's own constructor gives."""

from __future__ import annotations

from typing import Any

import pytest
from paho.mqtt.exception import MQTTException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from outpost import mqttprops


def made_by_paho(packet_type: int) -> Any:
    made = Properties.__new__(Properties)
    mqttprops._original_init(made, packet_type)
    return made


@pytest.fixture(autouse=True)
def lightened() -> None:
    assert mqttprops.lighten()
    assert mqttprops.lighten()  # twice is once


def test_the_tables_are_paho_s_own() -> None:
    light, paho = Properties(PacketTypes.PUBLISH), made_by_paho(PacketTypes.PUBLISH)
    assert vars(light) == vars(paho)
    assert Properties(PacketTypes.PUBACK).names is light.names  # shared, not copied


@pytest.mark.parametrize(
    "fill",
    [
        {},
        {"MessageExpiryInterval": 60, "ContentType": "application/msgpack"},
        {"UserProperty": [("a", "1"), ("b", "2")], "CorrelationData": b"\x00\x01"},
        {"PayloadFormatIndicator": 1, "TopicAlias": 7, "ResponseTopic": "r/t"},
    ],
)
def test_a_publish_s_properties_read_back_as_paho_reads_them(fill: dict[str, Any]) -> None:
    written = Properties(PacketTypes.PUBLISH)
    for name, value in fill.items():
        setattr(written, name, value)
    packed = written.pack()

    light = Properties(PacketTypes.PUBLISH)
    light.unpack(packed + b"payload")
    paho = made_by_paho(PacketTypes.PUBLISH)
    paho.unpack(packed + b"payload")

    assert light.json() == paho.json() == written.json()
    light.clear()
    assert light.isEmpty()
    assert vars(light) == vars(made_by_paho(PacketTypes.PUBLISH))  # the tables stay


def test_refusals_are_paho_s() -> None:
    light = Properties(PacketTypes.PUBLISH)
    with pytest.raises(MQTTException, match="Property name must be one of"):
        light.NoSuchProperty = 1
    with pytest.raises(MQTTException, match="does not apply to packet type"):
        light.SessionExpiryInterval = 10
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 10  # the same property where it applies
    assert connect.json() == {"SessionExpiryInterval": 10}
