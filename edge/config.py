"""The agent's settings: `[agent]` in `agent.toml` of its data folder, overridden by flags."""

from __future__ import annotations

from dataclasses import dataclass

from outpost import schema
from outpost.settings import check_log_level, parse_broker_url

SECTION = "agent"


@dataclass(frozen=True)
class AgentConfig:
    """Every agent setting, with its default and what it is for."""

    heartbeat_interval: float = schema.setting(
        10.0, help="seconds between heartbeats", min=0.2, max=3600
    )
    keepalive: int = schema.setting(
        30, help="MQTT keepalive, seconds: how soon the broker notices a cut link", min=5, max=3600
    )
    reconnect_max_delay: float = schema.setting(
        60.0,
        help="cap of the jittered back-off between reconnect attempts, seconds",
        min=0.5,
        max=3600,
    )
    broker: str = schema.setting(
        "", help="override the broker given at enrollment, mqtts://HOST:PORT", max_len=256
    )
    log_level: str = schema.setting("info", help="debug, info, warning or error", max_len=16)

    def __post_init__(self) -> None:
        check_log_level(self.log_level, "agent.log_level")
        if self.broker:
            parse_broker_url(self.broker, "agent.broker")
