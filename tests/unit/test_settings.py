"""Unit tests of outpost/settings.py with the two real settings classes (hub and agent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.config import AgentConfig
from edge.profile import DeviceProfile
from hub.config import HubConfig
from outpost import schema
from outpost.settings import (
    SettingsError,
    check_log_level,
    load_file,
    parse_broker_url,
)


def write(tmp_path: Path, text: str, name: str = "settings.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def hub_error(path: Path | None, overrides: dict[str, Any] | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_file(HubConfig, path, "hub", overrides or {})
    return info.value


def agent_error(path: Path | None, overrides: dict[str, Any] | None = None) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        load_file(AgentConfig, path, "agent", overrides or {})
    return info.value


# ---------------------------------------------------------------------------- loading


def test_hub_file_is_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[hub]\n"
        "mqtt_port = 18883\n"
        "web_host = '0.0.0.0'\n"
        "public_url = 'https://hub.example.org'\n"  # every interface: devices need this
        "device_cert_days = 30\n"
        "log_level = 'debug'\n",
    )
    config = load_file(HubConfig, path, "hub", {})
    assert config.mqtt_port == 18883
    assert config.web_host == "0.0.0.0"
    assert config.device_cert_days == 30.0
    assert config.log_level == "debug"
    assert config.web_port == HubConfig().web_port  # untouched keys keep their default


def test_agent_file_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, "[agent]\nheartbeat_interval = 2.5\nkeepalive = 10\n")
    config = load_file(AgentConfig, path, "agent", {})
    assert config.heartbeat_interval == 2.5
    assert config.keepalive == 10
    assert config.reconnect_max_delay == AgentConfig().reconnect_max_delay


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_file(HubConfig, write(tmp_path, ""), "hub", {}) == HubConfig()
    assert load_file(AgentConfig, write(tmp_path, "[agent]\n"), "agent", {}) == AgentConfig()


def test_no_file_gives_defaults_and_overrides() -> None:
    assert load_file(HubConfig, None, "hub", {}) == HubConfig()
    assert load_file(HubConfig, None, "hub", {"web_port": 9000}).web_port == 9000


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nmqtt_port = 18883\nweb_port = 18443\n")
    config = load_file(HubConfig, path, "hub", {"mqtt_port": 1884})
    assert config.mqtt_port == 1884
    assert config.web_port == 18443


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nmqtt_port = 18883\n")
    config = load_file(HubConfig, path, "hub", {"mqtt_port": None, "log_level": None})
    assert config.mqtt_port == 18883
    assert config.log_level == "info"


def test_overrides_are_checked_too(tmp_path: Path) -> None:
    error = hub_error(write(tmp_path, "[hub]\n"), {"mqtt_port": 0})
    assert "mqtt_port" in str(error)


def test_valid_broker_urls_are_accepted() -> None:
    config = load_file(HubConfig, None, "hub", {"broker": "mqtts://broker.example:8883"})
    assert not config.managed_broker
    assert config.broker_address == ("broker.example", 8883)
    agent = load_file(AgentConfig, None, "agent", {"broker": "mqtts://10.0.0.1:1883"})
    assert agent.broker == "mqtts://10.0.0.1:1883"


def test_log_level_is_case_insensitive() -> None:
    assert load_file(HubConfig, None, "hub", {"log_level": "WARNING"}).log_level == "WARNING"


# ---------------------------------------------------------------------------- refusals


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nmqtt_prot = 1883\n")
    error = hub_error(path)
    assert "hub.mqtt_prot" in str(error)
    assert str(path) in str(error)


def test_unknown_override_names_the_key() -> None:
    assert "agent.colour" in str(agent_error(None, {"colour": "red"}))


def test_unknown_table_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub]\nmqtt_port = 1883\n[agent]\nkeepalive = 10\n")
    error = hub_error(path)
    assert "[agent]" in str(error)
    assert str(path) in str(error)


def test_wrong_section_alone_is_refused(tmp_path: Path) -> None:
    error = agent_error(write(tmp_path, "[hub]\nmqtt_port = 1883\n"))
    assert "[hub]" in str(error)


def test_top_level_key_outside_the_table_is_refused(tmp_path: Path) -> None:
    error = hub_error(write(tmp_path, "mqtt_port = 1883\n"))
    assert "mqtt_port" in str(error)


@pytest.mark.parametrize("value", ["5", "'abc'", "[1, 2]", "true"])
def test_section_that_is_not_a_table_is_refused(tmp_path: Path, value: str) -> None:
    # `hub = 5` parses as TOML but is not a [hub] table: a SettingsError, not a crash.
    error = hub_error(write(tmp_path, f"hub = {value}\n"))
    assert "hub" in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[hub]\nmqtt_port = '1883'\n", "hub.mqtt_port"),
        ("[hub]\nmqtt_port = 1883.0\n", "hub.mqtt_port"),
        ("[hub]\nmqtt_port = true\n", "hub.mqtt_port"),
        ("[hub]\nmqtt_port = 70000\n", "hub.mqtt_port"),
        ("[hub]\nweb_host = 1\n", "hub.web_host"),
        ("[hub]\ndevice_cert_days = 'ninety'\n", "hub.device_cert_days"),
        ("[hub]\ndevice_cert_days = 0\n", "hub.device_cert_days"),
        ("[hub]\nmax_payload_bytes = 10\n", "hub.max_payload_bytes"),
    ],
)
def test_wrong_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert key in str(hub_error(write(tmp_path, text)))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agent]\nkeepalive = 'soon'\n", "agent.keepalive"),
        ("[agent]\nkeepalive = 1\n", "agent.keepalive"),
        ("[agent]\nheartbeat_interval = false\n", "agent.heartbeat_interval"),
        ("[agent]\nreconnect_max_delay = 0.1\n", "agent.reconnect_max_delay"),
    ],
)
def test_wrong_agent_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    assert key in str(agent_error(write(tmp_path, text)))


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://x:1",  # not TLS
        "mqtts://host",  # no port
        "mqtts://:8883",  # no host
        "mqtts://host:0",
        "mqtts://host:99999",
        "mqtts://host:port",
        "https://host:8883",
        "host:8883",
        "mqtts//host:8883",
    ],
)
def test_bad_broker_url_is_refused_naming_the_key(url: str) -> None:
    # Exactly the key: a declaration's own checks name it once (not hub.hub.broker).
    assert str(hub_error(None, {"broker": url})).startswith("hub.broker: expected mqtts://")
    assert str(agent_error(None, {"broker": url})).startswith("agent.broker: expected mqtts://")


def test_cross_field_checks_name_the_key_under_its_table() -> None:
    assert str(hub_error(None, {"log_level": "loud"})).startswith("hub.log_level: must be one")
    assert str(hub_error(None, {"replica_id": "a"})).startswith("hub.replica_id: replicas share")
    assert str(agent_error(None, {"log_level": "loud"})).startswith("agent.log_level: must be one")


def test_bad_broker_url_in_a_file_is_refused(tmp_path: Path) -> None:
    error = hub_error(write(tmp_path, "[hub]\nbroker = 'mqtt://x:1'\n"))
    assert "hub.broker" in str(error)


@pytest.mark.parametrize("level", ["verbose", "", "critical", "info "])
def test_bad_log_level_is_refused(level: str) -> None:
    assert "hub.log_level" in str(hub_error(None, {"log_level": level}))
    assert "agent.log_level" in str(agent_error(None, {"log_level": level}))


def test_missing_file_gives_settings_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    error = hub_error(missing)
    assert str(missing) in str(error)


def test_invalid_toml_gives_settings_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub\nmqtt_port = \n")
    error = hub_error(path)
    assert str(path) in str(error)
    assert "TOML" in str(error)


def test_file_that_is_not_utf8_gives_settings_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[hub]\nweb_host = '\xe9t\xe9'\n")
    assert str(path) in str(hub_error(path))


def test_unreadable_path_gives_settings_error(tmp_path: Path) -> None:
    # The class promises an error for a file that is "missing, unreadable or wrong".
    directory = tmp_path / "hub.toml"
    directory.mkdir()
    assert str(directory) in str(hub_error(directory))


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


# ---------------------------------------------------------------------------- helpers


def test_parse_broker_url() -> None:
    assert parse_broker_url("mqtts://broker.example:8883", "k") == ("broker.example", 8883)
    assert parse_broker_url("mqtts://[::1]:8883", "k") == ("::1", 8883)
    with pytest.raises(schema.SchemaError) as info:
        parse_broker_url("mqtt://x:1", "some.key")
    assert info.value.path == "some.key"


def test_check_log_level() -> None:
    for level in ("debug", "info", "warning", "error", "Error"):
        check_log_level(level, "k")
    with pytest.raises(schema.SchemaError) as info:
        check_log_level("loud", "x.log_level")
    assert info.value.path == "x.log_level"


def test_hub_derived_urls() -> None:
    config = HubConfig(mqtt_host="::1", mqtt_port=1884, web_host="::1", web_port=8444)
    assert config.managed_broker
    assert config.device_broker_url == "mqtts://[::1]:1884"
    assert config.hub_url == "https://[::1]:8444"
    explicit = HubConfig(broker_public_url="mqtts://b:1", public_url="https://h")
    assert explicit.device_broker_url == "mqtts://b:1"
    assert explicit.hub_url == "https://h"


# ---------------------------------------------------------------------------- help texts


@pytest.mark.parametrize("cls", [HubConfig, AgentConfig, DeviceProfile])
def test_every_setting_has_help_text(cls: type[Any]) -> None:
    rows = schema.describe(cls)
    assert rows
    missing = [key for key, _tp, _default, help_text in rows if not help_text.strip()]
    assert missing == []


def test_describe_lists_every_hub_and_agent_field() -> None:
    agent_keys = {row[0] for row in schema.describe(AgentConfig)}
    assert {
        "heartbeat_interval",
        "keepalive",
        "reconnect_max_delay",
        "broker",
        "log_level",
        "bounds.results.max_records",
        "bounds.metrics.max_age_s",
        "sync.rate_bytes_per_s",
        "sync.windows",
    } <= agent_keys
    assert "bounds" not in agent_keys, "nested tables are flattened"
    hub_keys = {row[0] for row in schema.describe(HubConfig)}
    assert {"broker", "mqtt_port", "web_port", "log_level", "max_payload_bytes"} <= hub_keys


def test_describe_flattens_the_device_profile() -> None:
    keys = {row[0] for row in schema.describe(DeviceProfile)}
    assert {"profile.name", "capabilities.cores", "thermal.stop_c", "runtime.num_threads"} <= keys
    assert "thermal" not in keys
