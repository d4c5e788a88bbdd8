"""`outpost-hub broker-config`: what an external broker needs to carry this hub's fleet.

The managed Mosquitto is configured by the hub at each start (hub/broker/mosquittoconf.py). A broker
the hub does not run, shared by several replicas, gets the same rules written once into
a folder: the listener (mutual TLS 1.2+, the certificate's CN as user name and client
id), the ACL (a device writes only its own `up/<kind>` and reads only its own `down/#`;
each replica's link certificate gets the hub's rights), the CRL, and copies of the
fleet CA, the server certificate and its key. Mosquitto's files are rendered by the same
code as the managed broker's; EMQX's are written from its documentation (see
`EMQX_CONF` below): EMQX cannot run here, so they are checked against that alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509

from hub.broker.kinds import DEFAULT_LISTEN as DEFAULT_LISTEN  # re-exported
from hub.broker.kinds import KINDS as KINDS
from hub.broker.mosquittoconf import MAX_INFLIGHT, BrokerFiles, acl_text, render_config
from hub.broker.sharegroup import share_group
from hub.config import HubConfig, check_replica_id
from hub.config_endpoints import host_problem
from hub.fleet import keyfiles
from hub.fleet.revocation import current_crl
from hub.paths import HUB_CLIENT_CN, HUB_LINK_CN, HubPaths, link_cn
from hub.store import HubStore
from outpost import files
from outpost.wire import TOPIC_PREFIX, UP_KINDS, UP_WILDCARD

# Each file written, and its mode: certificates and the CRL are public (the broker may
# run as another user), keys and the rules are the owner's alone.
CA_CERT, SERVER_CERT, SERVER_KEY, CRL = "ca.crt", "server.crt", "server.key", "crl.pem"
README = "README.txt"


class BrokerConfigError(ValueError):
    """The broker configuration cannot be written as asked (the message says why)."""


@dataclass(frozen=True)
class Listen:
    """Where the broker listens for devices and replicas."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        """Parse HOST:PORT ([ADDRESS]:PORT for IPv6)."""
        host, sep, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise BrokerConfigError(
                f"--listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN} or [::]:8883"
            )
        if problem := host_problem(host):  # it goes into the broker's configuration as is
            raise BrokerConfigError(f"--listen {text!r}: {host!r}: {problem}")
        return cls(host, int(port))

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Request:
    """What to write: for which broker, where, for which replicas."""

    kind: str
    out: Path
    listen: Listen
    replicas: tuple[str, ...] = ()
    force: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BrokerConfigError(f"--kind {self.kind!r}: choose one of {', '.join(KINDS)}")
        for replica in self.replicas:
            check_replica_id(replica, "--replica")


def write(paths: HubPaths, config: HubConfig, store: HubStore, request: Request) -> list[Path]:
    """Write the broker's configuration into `request.out` (created if missing; refused
    if it holds anything unless `force`); return the files written."""
    out = request.out.absolute()
    _check_folder(out, force=request.force)
    pem, _ = current_crl(paths, store)
    contents: dict[str, tuple[bytes, int]] = {
        CA_CERT: (paths.ca_cert.read_bytes(), files.PUBLIC),
        SERVER_CERT: (paths.server_cert.read_bytes(), files.PUBLIC),
        SERVER_KEY: (paths.server_key.read_bytes(), files.PRIVATE),
        CRL: (pem, files.PUBLIC),
    }
    group = share_group(paths)
    render = _RENDERERS[request.kind]
    for name, text in render(out, config, request, group).items():
        contents[name] = (text.encode(), files.PRIVATE)
    contents[README] = (_readme(paths, out, request, group).encode(), files.PRIVATE)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    for name, (data, mode) in contents.items():
        files.replace(out / name, data, mode)
        written.append(out / name)
    return written


def _check_folder(out: Path, *, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise BrokerConfigError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BrokerConfigError(
            f"--out {out} is not empty: give an empty or new folder, or --force to "
            "overwrite the files this command writes there"
        )


# ------------------------------------------------------------------------ Mosquitto


def mosquitto_files(out: Path, config: HubConfig, request: Request, group: str) -> dict[str, str]:
    """mosquitto.conf and its ACL: the managed broker's, with paths in `out`."""
    where = BrokerFiles(
        folder=out,
        acl=out / "acl",
        log=out / "mosquitto.log",
        ca_cert=out / CA_CERT,
        server_cert=out / SERVER_CERT,
        server_key=out / SERVER_KEY,
        crl=out / CRL,
    )
    conf = render_config(
        where,
        header="# Written by `outpost-hub broker-config --kind mosquitto`; see README.txt.",
        host=request.listen.host,
        port=request.listen.port,
        max_packet_bytes=config.max_payload_bytes,
    )
    return {"mosquitto.conf": conf, "acl": acl_text(request.replicas)}


# ----------------------------------------------------------------------------- EMQX

# Every setting below is EMQX 5's documented configuration; none was run here.
EMQX_CONF: Final = """\
## Written by `outpost-hub broker-config --kind emqx`; see README.txt.
## Checked only against EMQX 5's documentation (EMQX cannot run where this was written).
## Documented settings used (https://docs.emqx.com/en/emqx/latest/ ...):
##  - listeners.ssl.default.ssl_options: cacertfile, certfile, keyfile, verify =
##    verify_peer, fail_if_no_peer_cert, versions, enable_crl_check
##    (configuration/listener.html, network/crl.html)
##  - listeners.<type>.default.enable = false: the plain TCP and WebSocket listeners off
##    (configuration/listener.html)
##  - mqtt.peer_cert_as_username = cn, mqtt.peer_cert_as_clientid = cn; with them mTLS is
##    required: verify_peer and fail_if_no_peer_cert (access-control/authn/x509.html)
##  - mqtt.shared_subscription, max_packet_size, max_mqueue_len, max_inflight
##    (configuration/mqtt.html)
##  - authorization.no_match, deny_action, sources = [{{type = file, path}}], and the ACL
##    file's rules and ${{username}} placeholder (access-control/authz/authz.html,
##    access-control/authz/file.html)

## Devices and replicas connect with mutual TLS only. No other listener: a client on a
## plain one could claim any user name, a replica's among them.
listeners.tcp.default.enable = false
listeners.ws.default.enable = false
listeners.wss.default.enable = false
listeners.ssl.default {{
  enable = true
  bind = "{bind}"
  ssl_options {{
    cacertfile = "{ca}"
    certfile = "{cert}"
    keyfile = "{key}"
    verify = verify_peer
    fail_if_no_peer_cert = true
    versions = ["tlsv1.3", "tlsv1.2"]
    ## EMQX checks revocation only against CRLs it fetches over HTTP from the CRL
    ## Distribution Point named in each client certificate (and the CRL needs the
    ## Issuing Distribution Point extension): the fleet's certificates name none, so
    ## the check stays off and the hub's {crl} is not read. See README.txt.
    enable_crl_check = false
  }}
}}

mqtt {{
  ## A client's user name and client id are its certificate's CN, whatever it sends:
  ## the ACL keys on it, and one session per device lets the hub end it by a takeover.
  peer_cert_as_username = cn
  peer_cert_as_clientid = cn
  ## Replicas subscribe to $share/{group}/{up}:
  ## each device message reaches one of them.
  shared_subscription = true
  ## Headroom over the hub's max_payload_bytes, as the managed Mosquitto's.
  max_packet_size = "{max_packet_kb}KB"
  ## The managed Mosquitto's queue for the hub's session (max_queued_messages).
  max_mqueue_len = 200000
  ## QoS 1 messages in flight per session, as the managed Mosquitto's
  ## max_inflight_messages: EMQX's default of 32 would make the hub's downlinks wait
  ## on broker round trips during a ramp of hellos.
  max_inflight = {max_inflight}
}}

authorization {{
  ## Nothing is allowed that the ACL does not allow (this list replaces EMQX's default
  ## sources, whose acl.conf ends with {{allow, all}}).
  no_match = deny
  deny_action = ignore
  sources = [
    {{
      type = file
      enable = true
      path = "{acl}"
    }}
  ]
}}
"""


def emqx_files(out: Path, config: HubConfig, request: Request, group: str) -> dict[str, str]:
    """emqx.conf (a fragment to merge into EMQX's configuration) and acl.conf."""
    max_packet_bytes = config.max_payload_bytes * 4 + 1024  # as hub/broker/mosquittoconf.py's
    conf = EMQX_CONF.format(
        bind=request.listen.bind,
        ca=out / CA_CERT,
        cert=out / SERVER_CERT,
        key=out / SERVER_KEY,
        crl=CRL,
        group=group,
        up=UP_WILDCARD,
        max_packet_kb=-(-max_packet_bytes // 1024),
        max_inflight=MAX_INFLIGHT,
        acl=out / "acl.conf",
    )
    return {"emqx.conf": conf, "acl.conf": emqx_acl(request.replicas, group)}


def emqx_acl(replicas: Sequence[str], group: str) -> str:
    """EMQX's file authorization rules (Erlang terms), first match wins, deny by default."""
    hubs = [HUB_LINK_CN, HUB_CLIENT_CN, *(link_cn(r) for r in replicas)]
    down = f"{TOPIC_PREFIX}/+/down/#"
    lines = [
        "%% Written by `outpost-hub broker-config --kind emqx`; see README.txt.",
        "%% Checked only against EMQX 5's documentation (access-control/authz/file.html).",
        "%%",
        "%% The hub: its link, its certificate on disk, and each replica's link. EMQX",
        f"%% authorizes a shared subscription ($share/{group}/{UP_WILDCARD}) by its",
        "%% topic filter alone, so the rule names the filter (a rule naming $share/...",
        "%% would never match: emqx_channel:do_check_sub_authzs2 checks",
        "%% emqx_topic:get_shared_real_topic of the subscription).",
    ]
    for user in hubs:
        lines.append(f'{{allow, {{username, "{user}"}}, subscribe, ["{UP_WILDCARD}"]}}.')
        lines.append(f'{{allow, {{username, "{user}"}}, publish, ["{down}"]}}.')
    own_up = ", ".join(f'"{TOPIC_PREFIX}/${{username}}/up/{kind}"' for kind in UP_KINDS)
    lines += [
        "%% Every device, by its certificate's CN (${username}): it writes only its own",
        "%% up/<kind> for the contract's kinds and reads only its own down/#.",
        f"{{allow, all, publish, [{own_up}]}}.",
        f'{{allow, all, subscribe, ["{TOPIC_PREFIX}/${{username}}/down/#"]}}.',
        "%% Nothing else.",
        "{deny, all}.",
    ]
    return "\n".join(lines) + "\n"


_RENDERERS: Final[dict[str, Callable[[Path, HubConfig, Request, str], dict[str, str]]]] = {
    "mosquitto": mosquitto_files,
    "emqx": emqx_files,
}


# --------------------------------------------------------------------------- README


def _readme(paths: HubPaths, out: Path, request: Request, group: str) -> str:
    replicas = ", ".join(request.replicas) or "none (a single hub, replica_id empty)"
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    names = ", ".join(_server_names(server)) or "none"
    common = f"""\
Written by `outpost-hub broker-config --kind {request.kind}` on {time.strftime("%Y-%m-%d %H:%M")}
from the hub data folder {paths.root.absolute()}.

Fleet CA fingerprint: {keyfiles.ca_fingerprint(paths.ca_cert)}
Listener: {request.listen.bind} (mutual TLS only; the certificate's CN is the user name
and the client id)
Replicas allowed the hub's rights (ACL): {replicas}.
  Each replica links with the CN {link_cn("<id>")} and subscribes to
  $share/{group}/{UP_WILDCARD} (the group's name is derived
  from the hub's signing key: a device that knew it could join the group, and the
  broker would drop the messages it chose for it). A replica not listed here gets no device
  message; worse, Mosquitto still counts it in the share group and drops the messages
  it would have given it. List every replica: run this command again with all of them
  and --force, then reload the broker.

Files (paths inside the configuration are absolute: edit them if you move the files;
keys and rules are readable by their owner only, the user who ran this command):
  {CA_CERT}      the fleet CA: the broker accepts client certificates it signed
  {SERVER_CERT}  the broker's server certificate (also the hub's); devices check the
                broker's address against its names: {names}
                (add names with `outpost-hub init --san` on a new hub; a broker at
                another address needs a certificate with that name)
  {SERVER_KEY}   its private key (0600)
  {CRL}        the revoked certificates, as the hub's registry lists them now
"""
    if request.kind == "mosquitto":
        return common + _mosquitto_readme(out)
    return common + _emqx_readme(out)


def _mosquitto_readme(out: Path) -> str:
    return f"""\
  mosquitto.conf the broker's configuration (the managed broker's, with these paths;
                 Mosquitto runs as the user named by its `user` line, who must own
                 these files; it keeps its data and log in this folder)
  acl            who may publish and subscribe where

Tested: the project's tests start Mosquitto with these files and check the shared
subscription, the ACL and revocation through them.

Run:   mosquitto -c {out / "mosquitto.conf"}
Hub:   in hub.toml of every replica (or the single hub):
         broker = "mqtts://HOST:PORT"        (how the hub reaches this listener)
         broker_crl_path = "{out / CRL}"
         broker_reload_command = "kill -HUP <mosquitto's pid>"
                                 (or "systemctl reload mosquitto", or any command
                                 that sends Mosquitto SIGHUP)
       so that each `outpost-hub device revoke` (and the API's) rewrites the CRL here
       and Mosquitto re-reads it; the hub then proves that the broker refuses the
       device's certificates as revoked.
       Under systemd/outpost-hub.service (user outpost, ProtectSystem=strict,
       NoNewPrivileges) the hub may write this folder only if a drop-in lists it in
       ReadWritePaths=, and may neither run `systemctl reload` nor signal a broker of
       another user: docs/scale-out.md (step 4) shows a reload that works.
"""


def _emqx_readme(out: Path) -> str:
    return f"""\
  emqx.conf      a fragment to merge into EMQX's configuration (emqx.conf or
                 base.hocon) on every node of the cluster
  acl.conf       the file authorizer's rules (Erlang terms), named by emqx.conf

NOT TESTED: EMQX cannot run where this was written. These files were checked only
against EMQX 5's documentation (the settings used are listed at the top of emqx.conf).
Try them on a staging cluster first: connect a device and a replica, and check that a
device cannot publish into another device's topics nor read its downlinks.

Copy this folder to the same path on every EMQX node (or edit the paths in emqx.conf),
readable by the user EMQX runs as, merge emqx.conf, and restart EMQX.
Hub: in hub.toml of every replica, broker = "mqtts://HOST:PORT".

Revocation: EMQX checks client certificates against CRLs only when it can fetch them
over HTTP from the CRL Distribution Point named in each certificate, and the fleet's
certificates name none; so EMQX does not read {out / CRL}. When a device is revoked the
hub still takes its session over (ending the connection it has), but the device could
connect again. Ban it in EMQX as well, by user name (its device id), e.g.
  POST /api/v5/banned  {{"as": "username", "who": "<device id>"}}
(EMQX's banned-clients API: access-control/blacklist.html). Leave broker_crl_path and
broker_reload_command empty, or point them at a script of your own.
"""


def _server_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*san.get_values_for_type(x509.DNSName), *addresses]
