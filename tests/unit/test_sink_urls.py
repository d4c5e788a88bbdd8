"""A sink URL no sink could use (a port that does not parse or is out of range, a broken
IPv6 bracket, no host, another kind's scheme) is refused as hub.toml loads, naming the
sink and the key; and `shown()`, which every sink's status and error goes through, gives
an answer for any string at all, without the credentials it may hold."""

from __future__ import annotations

from typing import Any

import pytest

from hub.config import HubConfig
from hub.sinks.config import SinkConfig, shown
from outpost import schema

BAD = [
    ("webhook", "https://hooks.example.com:8443x/in", "does not parse (Port could not be cast"),
    ("webhook", "https://hooks.example.com:99999/in", "does not parse (Port out of range"),
    ("nats", "nats://[::1", "does not parse (Invalid IPv6 URL)"),
    ("nats", "nats://127.0.0.1:0", "port 0 cannot be connected to"),
    ("rabbitmq", "amqp:///vhost", "names no host"),
    ("nats", "amqp://127.0.0.1:5672/", "url must be nats://HOST:PORT"),
    ("webhook", "ftp://hooks.example.com/in", "url must be https://"),
]


@pytest.mark.parametrize(("kind", "url", "said"), BAD)
def test_a_url_no_sink_can_use_is_refused_as_the_config_loads(
    kind: str, url: str, said: str
) -> None:
    table: dict[str, Any] = {
        "mqtt_port": 1883,
        "sinks": [{"name": "good", "kind": "nats", "url": "nats://h:1"}],
    }
    table["sinks"].append({"name": "typo", "kind": kind, "url": url})
    with pytest.raises(schema.SchemaError) as refused:
        schema.load(HubConfig, table, "hub")
    assert refused.value.path == "hub.sinks[1].url"
    assert refused.value.message.startswith("sink typo: ")
    assert said in refused.value.message


@pytest.mark.parametrize(
    "url",
    [
        "https://alice:hunter2@hooks.example.com:8443x/in?token=TOPSECRET",
        "https://alice:hunter2@hooks.example.com:99999/in#TOPSECRET",
        "nats://alice:hunter2@[::1",
        "https://alice:hunter2@hooks.example.com/in?token=TOPSECRET",
    ],
)
def test_shown_answers_for_any_url_without_its_credentials(url: str) -> None:
    text = shown(url)
    assert not any(s in text for s in ("alice", "hunter2", "TOPSECRET")), text


def test_shown_keeps_what_names_the_place() -> None:
    assert (
        shown("https://u:p@hooks.example.com:8443x/in?q=1") == "https://hooks.example.com:8443x/in"
    )
    assert shown("nats://u:p@[::1]:4222") == "nats://[::1]:4222"


def test_a_good_url_still_loads() -> None:
    config = SinkConfig(name="bus", kind="rabbitmq", url="amqps://rabbit.example:5671/%2f")
    assert config.url == "amqps://rabbit.example:5671/%2f"
