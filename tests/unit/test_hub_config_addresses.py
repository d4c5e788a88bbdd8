"""The hub's addresses (hub/config_endpoints.py): where it listens must be a host, and
what it hands devices (tokens' hub URL, the broker URL) an address they can reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.broker.mosquittoconf import config_text
from hub.config import HubConfig
from hub.config_endpoints import host_problem
from hub.paths import HubPaths
from outpost.settings import SettingsError, load_file


def loaded(settings: dict[str, Any]) -> HubConfig:
    return load_file(HubConfig, None, "hub", settings)


def refusal(settings: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as info:
        loaded(settings)
    return str(info.value)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"web_host": "0.0.0.0"}, "hub.web_host: '0.0.0.0' (every interface)"),
        ({"web_host": "::"}, "hub.web_host: '::' (every interface)"),
        ({"web_host": ""}, "hub.web_host: empty (every interface)"),
        ({"mqtt_host": "0.0.0.0"}, "hub.mqtt_host: '0.0.0.0' (every interface)"),
        ({"mqtt_host": "::"}, "hub.mqtt_host: '::' (every interface)"),
        ({"broker": "mqtts://0.0.0.0:8883"}, "hub.broker: '0.0.0.0' (every interface)"),
    ],
)
def test_listening_everywhere_without_a_public_address_is_refused(
    settings: dict[str, Any], said: str
) -> None:
    message = refusal(settings)
    assert message.startswith(said), message
    assert "public_url" in message  # the key that makes it right


def test_listening_everywhere_with_a_public_address_is_accepted() -> None:
    config = loaded(
        {
            "web_host": "0.0.0.0",
            "public_url": "https://hub.example.org:8443",
            "mqtt_host": "::",
            "broker_public_url": "mqtts://mqtt.example.org:8883",
        }
    )
    assert config.hub_url == "https://hub.example.org:8443"
    assert config.device_broker_url == "mqtts://mqtt.example.org:8883"
    assert loaded({"web_host": "", "public_url": "https://[2001:db8::1]"}).hub_url == (
        "https://[2001:db8::1]"
    )
    external = loaded(
        {"broker": "mqtts://0.0.0.0:8883", "broker_public_url": "mqtts://10.1.2.3:8883"}
    )
    assert external.device_broker_url == "mqtts://10.1.2.3:8883"


@pytest.mark.parametrize(
    ("key", "url", "said"),
    [
        ("public_url", "ftp://x", "expected https://HOST[:PORT], got 'ftp://x'"),
        ("public_url", "hub.example.org", "expected https://HOST[:PORT]"),
        ("public_url", "https://:8443", "expected https://HOST[:PORT]"),
        ("public_url", "https://h:0", "expected https://HOST[:PORT]"),
        ("public_url", "https://h:99999", "expected https://HOST[:PORT]"),
        ("public_url", "https://h/outpost", "expected https://HOST[:PORT]"),
        ("public_url", "https://h?x", "expected https://HOST[:PORT]"),
        ("public_url", "https://me@h", "expected https://HOST[:PORT]"),
        ("public_url", "https://a b", "'a b': neither an IP address nor a host name"),
        ("public_url", "https://0.0.0.0:8443", "'0.0.0.0' is no address devices can reach"),
        ("broker_public_url", "https://b:8883", "expected mqtts://HOST:PORT"),
        ("broker_public_url", "mqtts://b", "expected mqtts://HOST:PORT"),
        ("broker_public_url", "mqtts://b:1/x", "expected mqtts://HOST:PORT"),
        ("broker_public_url", "mqtts://[::]:8883", "'::' is no address devices can reach"),
    ],
)
def test_a_public_url_of_another_form_is_refused(key: str, url: str, said: str) -> None:
    message = refusal({key: url})
    assert message.startswith(f"hub.{key}: "), message
    assert said in message


@pytest.mark.parametrize(
    ("key", "host", "said"),
    [
        # A line break would add a listener of its own to mosquitto.conf.
        (
            "mqtt_host",
            "127.0.0.1\nlistener 44016 127.0.0.1\nallow_anonymous true",
            "neither an IP address nor a host name",
        ),
        ("mqtt_host", "bad host name", "'bad host name': neither an IP address"),
        ("mqtt_host", "", "hub.mqtt_host: empty: give an address"),
        ("mqtt_host", "-hub.example", "neither an IP address nor a host name"),
        ("web_host", "bad host name", "'bad host name': neither an IP address"),
        ("web_host", "10.0.0.256", "not a valid IP address"),
        ("web_host", "hub..example", "neither an IP address nor a host name"),
        ("web_host", "ü.example", "write it as 'xn--tda.example'"),
        ("broker", "mqtts://a b:8883", "hub.broker: 'a b': neither"),
    ],
)
def test_a_listener_address_that_is_no_host_is_refused(key: str, host: str, said: str) -> None:
    message = refusal({key: host})
    assert message.startswith(f"hub.{key}: "), message
    assert said in message


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "::1",
        "localhost",
        "hub-1.site.example",
        "HUB.local",
        "fe80::1%eth0",
        "mqtt_broker",  # a Docker Compose service: names that resolve may carry _
        "hub.example.org.",  # fully qualified, its last dot written
    ],
)
def test_a_listener_address_that_is_a_host_is_accepted(host: str) -> None:
    config = loaded({"mqtt_host": host, "web_host": host})
    assert config.broker_address == (host, 8883)
    assert host_problem(host) is None


def test_defaults_and_a_file_with_a_public_address_load(tmp_path: Path) -> None:
    assert HubConfig().hub_url == "https://127.0.0.1:8443"
    assert HubConfig().device_broker_url == "mqtts://127.0.0.1:8883"
    path = tmp_path / "hub.toml"
    path.write_text(
        "[hub]\nweb_host = '0.0.0.0'\npublic_url = 'https://hub.example.org'\n", encoding="utf-8"
    )
    assert load_file(HubConfig, path, "hub", {}).hub_url == "https://hub.example.org"


def test_mosquitto_conf_takes_no_host_that_would_add_lines(tmp_path: Path) -> None:
    paths = HubPaths(tmp_path)
    text = config_text(paths, host="::", port=8883, max_packet_bytes=1024)
    assert "\nlistener 8883 ::\n" in text
    with pytest.raises(ValueError, match="listener address"):
        config_text(paths, host="127.0.0.1\nallow_anonymous true", port=8883, max_packet_bytes=1)
