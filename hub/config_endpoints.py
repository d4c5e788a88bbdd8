"""Where the hub listens and what it tells devices: the broker and HTTPS addresses in
`[hub]`, and the URLs derived from them.

Apart from hub/config.py so that the addresses, and the rules an external broker's
settings follow, read in one place; `HubConfig` stacks the other sections on these.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

from msgspec import Meta

from outpost import schema
from outpost.schema import Struct
from outpost.settings import parse_broker_url


class EndpointSettings(Struct, frozen=True):
    """The `[hub]` keys that say where the broker and the HTTPS endpoint are."""

    broker: Annotated[
        str,
        Meta(
            max_length=256,
            description="external broker as mqtts://HOST:PORT; empty runs the managed Mosquitto",
        ),
    ] = ""
    mqtt_host: Annotated[
        str,
        Meta(
            max_length=255,
            description="address the managed Mosquitto listens on (loopback by default)",
        ),
    ] = "127.0.0.1"
    mqtt_port: Annotated[int, Meta(ge=1, le=65535, description="port of the managed Mosquitto")] = (
        8883
    )
    broker_public_url: Annotated[
        str,
        Meta(
            max_length=256,
            description="broker address given to devices at enrollment; empty derives it from the "
            "listener",
        ),
    ] = ""
    broker_crl_path: Annotated[
        str,
        Meta(
            max_length=4096,
            description="external broker: also write the CRL to this absolute path, where the "
            "broker "
            "reads it; empty: only into the data folder's broker/crl.pem",
        ),
    ] = ""
    broker_reload_command: Annotated[
        str,
        Meta(
            max_length=4096,
            description="external broker: command run (without a shell) after each CRL write so "
            "that "
            "the broker re-reads it, e.g. `systemctl reload mosquitto`; empty: none",
        ),
    ] = ""
    mosquitto: Annotated[str, Meta(max_length=4096, description="Mosquitto program to run")] = (
        "mosquitto"
    )
    web_host: Annotated[
        str, Meta(max_length=255, description="address of the HTTPS endpoint (loopback by default)")
    ] = "127.0.0.1"
    web_port: Annotated[int, Meta(ge=1, le=65535, description="port of the HTTPS endpoint")] = 8443
    public_url: Annotated[
        str,
        Meta(
            max_length=256,
            description="hub URL written into enrollment tokens; empty derives it from "
            "web_host/web_port",
        ),
    ] = ""

    def _check_external_broker_settings(self) -> None:
        """Refuse the keys only an external broker reads when the broker is the managed
        one (`HubConfig.__post_init__` calls this, among its checks across sections)."""
        for key in ("broker_crl_path", "broker_reload_command"):
            if getattr(self, key) and not self.broker:
                raise schema.SchemaError(
                    key,
                    "is for an external broker: set broker (mqtts://HOST:PORT) too; the "
                    "managed Mosquitto reads the hub's CRL and is reloaded by the hub",
                )
        if self.broker_crl_path and not Path(self.broker_crl_path).is_absolute():
            raise schema.SchemaError(
                "broker_crl_path", f"{self.broker_crl_path!r}: give an absolute path"
            )
        if self.broker_reload_command:  # split now, so that a bad one fails at load
            _split_command(self.broker_reload_command, "broker_reload_command")

    @property
    def reload_argv(self) -> list[str]:
        """`broker_reload_command` split as a shell would, to run it without one."""
        if not self.broker_reload_command:
            return []
        return _split_command(self.broker_reload_command, "hub.broker_reload_command")

    @property
    def managed_broker(self) -> bool:
        return not self.broker

    @property
    def broker_address(self) -> tuple[str, int]:
        """Where the hub itself connects."""
        if self.broker:
            return parse_broker_url(self.broker, "hub.broker")
        return self.mqtt_host, self.mqtt_port

    @property
    def device_broker_url(self) -> str:
        """The broker URL handed to devices at enrollment."""
        if self.broker_public_url:
            return self.broker_public_url
        host, port = self.broker_address
        return f"mqtts://{_url_host(host)}:{port}"

    @property
    def hub_url(self) -> str:
        """The hub URL written into bootstrap tokens."""
        return self.public_url or f"https://{_url_host(self.web_host)}:{self.web_port}"


def _split_command(command: str, where: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:  # an unclosed quote, a trailing backslash
        raise schema.SchemaError(where, f"{command!r}: {exc}") from None
    if not argv:
        raise schema.SchemaError(where, "names no program")
    return argv


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
