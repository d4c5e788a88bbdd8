"""Where the hub listens and what it tells devices: the broker and HTTPS addresses in
`[hub]`, and the URLs derived from them.

Apart from hub/config.py so that the addresses, and the rules an external broker's
settings follow, read in one place; `HubConfig` stacks the other sections on these.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

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
            description="address (IP or host name) the managed Mosquitto listens on (loopback by "
            "default); 0.0.0.0 or :: (every interface) needs broker_public_url",
        ),
    ] = "127.0.0.1"
    mqtt_port: Annotated[int, Meta(ge=1, le=65535, description="port of the managed Mosquitto")] = (
        8883
    )
    broker_public_url: Annotated[
        str,
        Meta(
            max_length=256,
            description="broker address given to devices at enrollment, mqtts://HOST:PORT; empty "
            "derives it from the listener (mqtt_host/mqtt_port, or broker)",
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
        str,
        Meta(
            max_length=255,
            description="address (IP or host name) of the HTTPS endpoint (loopback by default); "
            "0.0.0.0, :: or empty (every interface) needs public_url",
        ),
    ] = "127.0.0.1"
    web_port: Annotated[int, Meta(ge=1, le=65535, description="port of the HTTPS endpoint")] = 8443
    public_url: Annotated[
        str,
        Meta(
            max_length=256,
            description="hub URL written into enrollment tokens, https://HOST[:PORT]; empty "
            "derives it from web_host/web_port",
        ),
    ] = ""

    def _check_addresses(self) -> None:
        """Refuse a listener address that is no host, and one devices would be handed but
        cannot reach: every interface (0.0.0.0) is where to listen, not where to connect,
        so it needs the public URL set. Each address ends up in a URL or in
        mosquitto.conf, where a space or a line break would change what it says
        (`HubConfig.__post_init__` calls this, among its checks across sections)."""
        if self.mqtt_host == "":  # the hub itself connects there: it needs an address
            raise schema.SchemaError(
                "mqtt_host", "empty: give an address (0.0.0.0 or :: listens on every interface)"
            )
        for key in ("web_host", "mqtt_host"):
            host = getattr(self, key)
            if host and (problem := host_problem(host)):
                raise schema.SchemaError(key, f"{schema.quote(host)}: {problem}")
        if self.public_url:
            _check_url(self.public_url, "https", "public_url")
        elif _listens_everywhere(self.web_host):
            raise schema.SchemaError(
                "web_host", _unreachable(self.web_host, "public_url", "https://HOST:PORT")
            )
        if self.broker_public_url:
            _check_url(self.broker_public_url, "mqtts", "broker_public_url")
        if self.broker:  # its form is checked with the other sections' keys
            host, _ = parse_broker_url(self.broker, "broker")
            if problem := host_problem(host):
                raise schema.SchemaError("broker", f"{schema.quote(host)}: {problem}")
        if not self.broker_public_url and _listens_everywhere(self.broker_address[0]):
            key = "broker" if self.broker else "mqtt_host"
            raise schema.SchemaError(
                key,
                _unreachable(self.broker_address[0], "broker_public_url", "mqtts://HOST:PORT"),
            )

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


# A label of a host name (RFC 1123): letters, digits and -, neither first nor last; and
# _, which names that resolve carry (a Docker Compose service, mqtt_broker). What would
# break a URL or a line of mosquitto.conf (a space, /, ?, #, @) stays out.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def host_problem(host: str) -> str | None:
    """Why `host` is neither an IP address nor a host name, or None when it is one."""
    if not host:
        return "empty"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not host.isascii():
        try:
            ascii_form = host.encode("idna").decode("ascii")
        except UnicodeError:
            return "not a valid host name"
        return f"not ASCII: write it as {ascii_form!r} (its IDNA form)"
    labels = host.removesuffix(".").split(".")  # a fully qualified name's last dot
    if len(host) > 254 or not all(_LABEL.fullmatch(label) for label in labels):
        return "neither an IP address nor a host name (letters, digits, - and _, between dots)"
    if labels[-1].isdigit():  # 10.0.0.256: a mistyped address, not a name
        return "not a valid IP address"
    return None


def _listens_everywhere(host: str) -> bool:
    """Whether `host` is an address to listen on every interface (none to connect to)."""
    if not host:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _unreachable(host: str, key: str, form: str) -> str:
    where = f"{host!r} (every interface)" if host else "empty (every interface)"
    return (
        f"{where} is where to listen, not an address devices can reach: set {key} = "
        f'"{form}" to the address they use'
    )


def _check_url(url: str, scheme: str, key: str) -> None:
    """Refuse `url` unless it is SCHEME://HOST[:PORT] with a host devices can reach
    (mqtts:// needs its port: the agent's broker URL names one)."""
    form = "mqtts://HOST:PORT" if scheme == "mqtts" else f"{scheme}://HOST[:PORT]"
    parsed = urlsplit(url)
    try:
        port = parsed.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if (
        parsed.scheme != scheme
        or not parsed.hostname
        or port == 0
        or parsed.netloc.endswith(":")
        or (port is None and scheme == "mqtts")
        or parsed.username is not None
        or parsed.path
        or parsed.query
        or parsed.fragment
        or "?" in url
        or "#" in url
    ):
        raise schema.SchemaError(key, f"expected {form}, got {schema.quote(url)}")
    if problem := host_problem(parsed.hostname):
        raise schema.SchemaError(key, f"{schema.quote(parsed.hostname)}: {problem}")
    if _listens_everywhere(parsed.hostname):
        raise schema.SchemaError(
            key, f"{parsed.hostname!r} is no address devices can reach: give the one they use"
        )
