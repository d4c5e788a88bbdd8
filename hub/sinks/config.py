"""A sink as `hub.toml` declares it (`[[sinks]]`), and the secrets it reads from files."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from outpost.schema import SchemaError, Struct

Kind = Literal["nats", "rabbitmq", "webhook"]
# Each kind's URL schemes (plain, TLS) and the form an error shows. The webhook's rule on
# plain http (loopback only) is its sink's: such a sink is shown failed, not refused.
URL_FORMS: dict[str, tuple[tuple[str, str], str]] = {
    "nats": (("nats", "tls"), "nats://HOST:PORT (tls://HOST:PORT for TLS)"),
    "rabbitmq": (("amqp", "amqps"), "amqp://HOST:PORT/VHOST (amqps://... for TLS)"),
    "webhook": (("http", "https"), "https:// (http:// only to a loopback address)"),
}


class SinkConfig(Struct, frozen=True):
    """One sink: where the hub's events go."""

    name: Annotated[
        str,
        Meta(
            pattern=r"^[a-z0-9][a-z0-9-]{0,31}$",
            description="its name (1-32 lower-case letters, digits, -): metrics, API, CLI",
        ),
    ]
    kind: Annotated[Kind, Meta(description="nats (JetStream), rabbitmq or webhook")]
    url: Annotated[
        str,
        Meta(
            max_length=1024,
            description="nats://HOST:PORT (tls://... for TLS), amqp://HOST:PORT/VHOST "
            "(amqps://... for TLS), or the webhook's https://... URL",
        ),
    ]
    credentials_file: Annotated[
        str,
        Meta(
            max_length=1024,
            description="file holding USER:PASSWORD for the bus (nats, rabbitmq), or the "
            "webhook's HMAC secret; kept out of hub.toml and never logged",
        ),
    ] = ""
    types: Annotated[
        list[str],
        Meta(
            description="event types it takes, with * as a wildcard (e.g. "
            "org.outpost.task.*); default: every type"
        ),
    ] = msgspec.field(default_factory=lambda: ["*"])
    selector: Annotated[
        dict[str, str],
        Meta(description="only events of devices with these labels (fleet-wide events pass)"),
    ] = {}
    target: Annotated[
        str,
        Meta(
            max_length=128,
            description="nats: the JetStream stream (made if missing, default OUTPOST); "
            "rabbitmq: the topic exchange (declared durable, default outpost)",
        ),
    ] = ""
    timeout_s: Annotated[
        float, Meta(gt=0, le=300, description="seconds to wait for the bus to acknowledge")
    ] = 10.0
    ca_file: Annotated[
        str,
        Meta(
            max_length=1024,
            description="TLS: PEM of the CA(s) the bus's or webhook's certificate must chain "
            "to, instead of the system's (a private CA); needs a TLS url",
        ),
    ] = ""
    cert_file: Annotated[
        str,
        Meta(
            max_length=1024,
            description="TLS: the hub's client certificate (PEM) for a bus that asks for "
            "one (mutual TLS); with key_file",
        ),
    ] = ""
    key_file: Annotated[
        str,
        Meta(max_length=1024, description="TLS: the private key (PEM) of cert_file"),
    ] = ""

    def __post_init__(self) -> None:
        # A URL no sink can use is refused as hub.toml loads, naming the sink: found
        # later, it would only fail the sink (a bad port used to break every sink's
        # status, as shown() raised).
        problem = url_problem(self.kind, self.url)
        if problem:
            raise SchemaError("url", f"sink {self.name}: {problem}")


def url_problem(kind: str, url: str) -> str:
    """What makes `url` unusable for a sink of `kind` (unparsable, a scheme of another
    kind, no host, a port outside 1-65535), or "" if nothing does."""
    schemes, form = URL_FORMS[kind]
    try:
        parts = urlsplit(url)
        port = parts.port  # parsed lazily: raises for "8443x" or 99999
    except ValueError as exc:
        return f"url {shown(url)!r} does not parse ({exc})"
    if parts.scheme not in schemes:
        return f"url must be {form}, got {shown(url)!r}"
    if not parts.hostname:
        return f"url {shown(url)!r} names no host"
    if port == 0:
        return f"url {shown(url)!r}: port 0 cannot be connected to (use 1-65535)"
    return ""


def shown(url: str) -> str:
    """`url` without any user, password, query or fragment in it, for messages and logs;
    any string at all (an API lists sinks with it, and a receiver's Location is shown)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # a bad port or bracket: the rest as written, credentials still out
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "", url
        rest = rest.split("?", 1)[0].split("#", 1)[0]
        # Everything up to the last @ may be a password (even one holding a '/').
        return f"{scheme}{sep}{rest.rpartition('@')[2]}"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_bus_url(config: SinkConfig, schemes: tuple[str, str], form: str) -> ssl.SSLContext | None:
    """Refuse a bus URL of another scheme than `schemes` (plain, TLS), without a host, or
    carrying credentials (the URL is shown in the API and logs: they belong in
    credentials_file); the TLS 1.2+ context its TLS scheme needs, else None."""
    parts = urlsplit(config.url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"sink {config.name}: url must be {form}, got {shown(config.url)!r}")
    if parts.username or parts.password:
        raise ValueError(
            f"sink {config.name}: put USER:PASSWORD in credentials_file, not in the url"
        )
    if parts.scheme != schemes[1]:
        plain_only(config)
        return None
    return tls_context(config)


def plain_only(config: SinkConfig) -> None:
    """Refuse TLS files on a URL without TLS: they would be ignored, and the operator who
    wrote them believes the link is protected."""
    given = [k for k in ("ca_file", "cert_file", "key_file") if getattr(config, k)]
    if given:
        raise ValueError(
            f"sink {config.name}: {', '.join(given)} given, but {shown(config.url)!r} does "
            "not use TLS"
        )


def tls_context(config: SinkConfig) -> ssl.SSLContext:
    """TLS 1.2+ verifying the peer against `ca_file` (else the system's CAs), with the
    hub's client certificate when `cert_file` is set; ValueError naming a bad file."""
    if bool(config.cert_file) != bool(config.key_file):
        raise ValueError(f"sink {config.name}: cert_file and key_file go together")
    try:
        context = ssl.create_default_context(cafile=config.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"sink {config.name}: ca_file {config.ca_file}: {_reason(exc)}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file:
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"sink {config.name}: cert_file {config.cert_file} with key_file "
                f"{config.key_file}: {_reason(exc)}"
            ) from exc
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM ({exc.reason or exc})"
    return exc.strerror or str(exc)


def read_secret(path: str, what: str) -> str:
    """The secret in `path` (stripped); ValueError naming the file and `what` it is for."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: cannot read {path}: {exc}") from exc
    if not text:
        raise ValueError(f"{what}: {path} is empty")
    return text


def user_password(path: str, what: str) -> tuple[str, str]:
    """USER:PASSWORD from a credentials file."""
    text = read_secret(path, what)
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise ValueError(f"{what}: {path} must hold USER:PASSWORD on one line")
    return user, password
