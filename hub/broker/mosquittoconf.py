"""What the managed Mosquitto is told: mosquitto.conf and the ACL, rendered for the
hub's data folder, or for another folder (`outpost-hub broker-config`, hub/broker/brokerconfig.py).

The broker is the fleet's only door: mutual TLS on one listener (loopback unless
configured), identity from the certificate's CN, and an ACL that confines each device to
its own topics.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hub.config_endpoints import host_problem
from hub.paths import HUB_CLIENT_CN, HUB_LINK_CN, HubPaths, link_cn
from outpost import files
from outpost.wire import TOPIC_PREFIX, UP_KINDS

MAX_QUEUED_BYTES = 512 << 20  # the broker's queue for the hub's session, at most


def acl_text(replicas: Sequence[str] = ()) -> str:
    """Return the ACL: the hub reads every device's `up`, writes every `down`; a device
    writes only its own `up/<kind>` for the contract's kinds and reads only its own
    `down/#`. `replicas`: the ids of hub replicas sharing this broker, each connecting
    with its own link certificate (Mosquitto's ACL names users one by one)."""
    # Only the contract's kinds: a device writing any other subtopic (retained, say,
    # 50,000 of them) would cost the broker's disk and the hub's start.
    writes = "".join(f"pattern write {TOPIC_PREFIX}/%u/up/{kind}\n" for kind in UP_KINDS)
    hub_rights = f"topic read {TOPIC_PREFIX}/+/up/#\ntopic write {TOPIC_PREFIX}/+/down/#\n"
    return (
        f"user {HUB_LINK_CN}\n{hub_rights}\n"
        "# the hub's certificate on disk, for a tool beside it (one connection at a time)\n"
        f"user {HUB_CLIENT_CN}\n{hub_rights}"
        + "".join(f"\nuser {link_cn(replica)}\n{hub_rights}" for replica in replicas)
        + "\n"
        "# every client, by the CN of its certificate (%u):\n"
        f"{writes}"
        f"pattern read {TOPIC_PREFIX}/%u/down/#\n"
    )


@dataclass(frozen=True)
class BrokerFiles:
    """The files a Mosquitto configuration names: the managed broker's in the hub's data
    folder, or those `outpost-hub broker-config` writes for an external one."""

    folder: Path  # persistence
    acl: Path
    log: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    crl: Path

    @classmethod
    def managed(cls, paths: HubPaths) -> BrokerFiles:
        d = paths.broker_dir
        return cls(
            folder=d,
            acl=d / "acl",
            log=d / "mosquitto.log",
            ca_cert=paths.ca_cert,
            server_cert=paths.server_cert,
            server_key=paths.server_key,
            crl=d / "crl.pem",
        )


def config_text(
    paths: HubPaths,
    *,
    host: str,
    port: int,
    max_packet_bytes: int,
    crl: bool = True,
    max_connections: int = -1,
) -> str:
    """Return mosquitto.conf for the managed broker (checking the CRL if `crl`)."""
    return render_config(
        BrokerFiles.managed(paths),
        header="# Written by outpost-hub at each start; edits are overwritten.",
        host=host,
        port=port,
        max_packet_bytes=max_packet_bytes,
        crl=crl,
        max_connections=max_connections,
    )


MAX_INFLIGHT = 1000


def render_config(
    where: BrokerFiles,
    *,
    header: str,
    host: str,
    port: int,
    max_packet_bytes: int,
    crl: bool = True,
    max_connections: int = -1,
) -> str:
    """Return a mosquitto.conf naming the files `where` (checking the CRL if `crl`)."""
    # The settings refuse such a host already; checked again where it is written, since
    # a space or line break in it would add words or lines of its own (a listener).
    if problem := host_problem(host):
        raise ValueError(f"listener address {host!r}: {problem}")
    return "\n".join(
        [
            header,
            "per_listener_settings false",
            "allow_anonymous false",
            # Run as whoever wrote these files (the hub, or `broker-config`), so
            # Mosquitto can read the keys (0600) they own.
            f"user {getpass.getuser()}",
            "persistence true",
            f"persistence_location {where.folder}/",
            "autosave_interval 30",
            f"log_dest file {where.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"acl_file {where.acl}",
            # Headroom over the hub's own limit so the hub sees and counts oversized
            # payloads instead of the broker silently dropping the connection.
            f"max_packet_size {max_packet_bytes * 4 + 1024}",
            "set_tcp_nodelay true",
            # Mosquitto's default queue of 1000 messages per client silently drops QoS 1
            # messages for the hub when it falls behind or restarts; allow far more. The
            # agent keeps what the hub has not acknowledged, so a drop is never a loss,
            # but each one costs a resend.
            "max_queued_messages 200000",
            # ... within a memory bound (messages may be up to max_packet_size each).
            # Honest devices' messages are not dropped at it: the hub drains its queue
            # at full speed, dropping a flooding device's excess before decoding it.
            f"max_queued_bytes {MAX_QUEUED_BYTES}",
            # QoS 1 messages in flight per client, each way: Mosquitto also announces it
            # to MQTT 5 clients as their Receive Maximum. At the default 20 the hub could
            # have only 20 downlinks (acks, policies, releases, assignments) unanswered at
            # once, so a ramp of hellos waited on broker round trips, not on the hub. The
            # window bounds no memory (queued messages are bounded above).
            f"max_inflight_messages {MAX_INFLIGHT}",
            "",
            f"listener {port} {host}",
            # Within the open-file limit (hub.broker.limits): past it Mosquitto would reset
            # every new client and blame tcpd; at the cap it refuses them cleanly.
            f"max_connections {max_connections}",
            f"cafile {where.ca_cert}",
            f"certfile {where.server_cert}",
            f"keyfile {where.server_key}",
            # Revoked devices; re-read on SIGHUP. Mosquitto refuses to start without the
            # file, so the hub writes one (perhaps empty) before it starts the broker.
            f"crlfile {where.crl}" if crl else "# no CRL written: revocation is off",
            "tls_version tlsv1.2",
            "require_certificate true",
            "use_identity_as_username true",
            # A client's id is its certificate's CN, whatever it sends: one session per
            # device, which the hub can take over to end it (hub/mqtt/sessions.py).
            "use_username_as_clientid true",
            "",
        ]
    )


def write_config(
    paths: HubPaths,
    *,
    host: str,
    port: int,
    max_packet_bytes: int,
    max_connections: int = -1,
    replicas: Sequence[str] = (),
) -> Path:
    """Write mosquitto.conf and the ACL into the broker folder; return the config path."""
    where = BrokerFiles.managed(paths)
    where.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    files.replace(where.acl, acl_text(replicas).encode(), files.PRIVATE)
    conf = where.folder / "mosquitto.conf"
    # The hub always writes the CRL first; a broker started on its own (tests,
    # benchmarks) runs without one rather than not at all.
    text = config_text(
        paths,
        host=host,
        port=port,
        max_packet_bytes=max_packet_bytes,
        crl=where.crl.exists(),
        max_connections=max_connections,
    )
    files.replace(conf, text.encode(), files.PRIVATE)
    return conf
