"""`outpost-hub`: initialise a hub, mint bootstrap tokens and API tokens, run the daemon;
and, through a running hub's API, manage devices, models, roll-outs, tasks and policy."""

from __future__ import annotations

import argparse

from hub.access.roles import ROLES
from hub.broker.kinds import DEFAULT_LISTEN, KINDS
from hub.cli import remote_parser
from hub.cli.lazy import command
from outpost import __version__, datafolders, durations, logs


class _Once(argparse.Action):
    """Store an option's value, refusing the option a second time (argparse would keep
    the last without a word)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice: give it once")
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """Build the parser: every command, its flags and the function that runs it."""
    parser = argparse.ArgumentParser(prog="outpost-hub", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create the fleet CA, certificates and signing keys")
    _data(p)
    p.add_argument(
        "--db",
        type=datafolders.text("a postgresql:// URL"),
        metavar="URL",
        help="keep the hub's data in this PostgreSQL database (postgresql://USER@HOST:PORT/DB)"
        " instead of hub.db: creates its schema and writes db_url into hub.toml",
    )
    p.add_argument(
        "--san",
        action="append",
        default=[],
        type=_server_name,
        metavar="NAME",
        help="extra DNS name or IP address of the hub's server certificate, the one devices "
        "connect to (repeatable)",
    )
    p.set_defaults(func=command("hub.cli.database:init"))

    p = sub.add_parser("enroll-token", help="print a one-time bootstrap token for a device")
    _data(p)
    _config(p)
    p.add_argument(
        "--ttl",
        type=durations.parse,
        default=None,
        help="lifetime such as 30m, 1h, 2d (default: enroll_token_ttl)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="label the enrolled device will carry (repeatable)",
    )
    p.set_defaults(func=command("hub.cli.tokens:enroll_token"))

    p = sub.add_parser("run", help="run the hub (and its managed Mosquitto)")
    _data(p)
    _config(p)
    # Each of these, empty, would read as not given: the default would run instead.
    p.add_argument(
        "--broker",
        type=datafolders.text("the broker's URL, mqtts://HOST:PORT"),
        help="use an external broker mqtts://HOST:PORT",
    )
    p.add_argument(
        "--mqtt-host",
        type=datafolders.text("an address"),
        help="address of the managed broker's listener",
    )
    p.add_argument("--mqtt-port", type=int, help="port of the managed broker's listener")
    p.add_argument(
        "--web-host", type=datafolders.text("an address"), help="address of the HTTPS endpoint"
    )
    p.add_argument("--web-port", type=int, help="port of the HTTPS endpoint")
    p.add_argument(
        "--log-level", type=str.lower, choices=logs.LOG_LEVELS, help="debug, info, warning or error"
    )
    p.add_argument("--log-format", choices=logs.LOG_FORMATS, help="json, text or auto")
    p.add_argument(
        "--db",
        type=datafolders.text("a database URL"),
        metavar="URL",
        help="database URL (db_url): postgresql://... or a path",
    )
    p.add_argument(
        "--replica-id",
        type=datafolders.text("this replica's id"),
        help="run as this replica of several (replica_id; needs --db and --broker)",
    )
    p.set_defaults(func=command("hub.cli.daemon:run"))

    p = sub.add_parser("db", help="the hub's database")
    db = p.add_subparsers(required=True, metavar="ACTION")
    m = db.add_parser(
        "migrate",
        help="copy a stopped hub's SQLite data into an empty PostgreSQL database",
    )
    _data(m)
    m.add_argument(
        "--from",
        dest="source",
        type=datafolders.text("the SQLite database, sqlite:PATH"),
        metavar="sqlite:PATH",
        help="the SQLite database to copy (default: hub.db in the data folder)",
    )
    m.add_argument(
        "--to",
        dest="target",
        type=datafolders.text("a postgresql:// URL"),
        required=True,
        metavar="postgresql://...",
    )
    m.set_defaults(func=command("hub.cli.database:migrate"))

    p = sub.add_parser("token", help="mint, list and revoke API tokens")
    token = p.add_subparsers(required=True, metavar="ACTION")
    t = token.add_parser("create", help="print a signed API token")
    _data(t)
    # Each once: argparse keeps the last of a repeat, so `--role viewer --role admin`
    # minted an admin token without a word.
    t.add_argument("--role", required=True, choices=ROLES, action=_Once)
    t.add_argument(
        "--ttl",
        type=durations.parse,
        default=None,
        action=_Once,
        help="lifetime such as 15m (default: 15m; an --api-key 90d)",
    )
    t.add_argument(
        "--subject", default=None, action=_Once, help="who will use it (default: the user name)"
    )
    t.add_argument(
        "--api-key",
        action="store_true",
        help="a long-lived key for automation (up to 366 days) instead of a session",
    )
    t.set_defaults(func=command("hub.cli.tokens:create_token"))
    t = token.add_parser("revoke", help="revoke an API token or a bootstrap token by its id (jti)")
    _data(t)
    t.add_argument("jti", type=datafolders.text("the token's id"))
    t.set_defaults(func=command("hub.cli.tokens:revoke_token"))
    t = token.add_parser("list", help="list issued tokens (ids and grants, never the tokens)")
    _data(t)
    t.set_defaults(func=command("hub.cli.tokens:list_tokens"))

    p = sub.add_parser("device", help="act on one device")
    device = p.add_subparsers(required=True, metavar="ACTION")
    d = device.add_parser(
        "revoke",
        help="revoke a device: the broker refuses its certificates, its connection is "
        "dropped and it cannot renew (works with the hub running or not)",
    )
    _data(d)
    _config(d)
    d.add_argument(
        "device_id",
        type=datafolders.text("the device's name or id"),
        metavar="DEVICE",
        help="the device's name or id, e.g. dev-0123456789ab",
    )
    d.set_defaults(func=command("hub.cli.devices:revoke_device"))

    p = sub.add_parser(
        "broker-config",
        help="write the configuration an external broker (Mosquitto or EMQX) needs to "
        "carry this hub's fleet: listener, ACL, CRL and certificates",
    )
    _data(p)
    _config(p)
    p.add_argument("--kind", required=True, choices=KINDS, help="the broker")
    p.add_argument(
        "--out",
        type=datafolders.path("the folder to write"),
        required=True,
        metavar="DIR",
        help="folder to write (new or empty)",
    )
    p.add_argument(
        "--replica",
        action="append",
        default=[],
        type=datafolders.text("a replica's id"),
        metavar="ID",
        help="replica_id of a hub replica sharing the broker (repeatable)",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the broker listens (default {DEFAULT_LISTEN})",
    )
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=command("hub.cli.broker:broker_config"))
    _bundle_commands(sub)
    _agent_release_commands(sub)
    remote_parser.add_commands(sub)
    return parser


def _bundle_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bundle", help="sync sites with no link by carried files (courier bundles)")
    bundle = p.add_subparsers(required=True, metavar="ACTION")
    b = bundle.add_parser(
        "import",
        help="import devices' bundles: store their records once, write their ack bundles",
    )
    _data(b)
    _config(b)
    b.add_argument(
        "paths",
        type=datafolders.path("a part file or a folder"),
        nargs="+",
        help="part files, or folders holding them",
    )
    b.add_argument(
        "--ack-out",
        type=datafolders.path("the folder for the ack bundles"),
        metavar="DIR",
        help="write each device's ack bundle here",
    )
    _max_size(b)
    _leases(b)
    b.set_defaults(func=command("hub.cli.bundles:import_bundles"))
    b = bundle.add_parser(
        "export",
        help="write bundles for devices: their marks, signed policy and tasks leased to them",
    )
    _data(b)
    _config(b)
    b.add_argument(
        "--to",
        type=datafolders.path("the folder to write in"),
        required=True,
        metavar="DIR",
        help="folder to write in",
    )
    b.add_argument(
        "--device",
        action="append",
        default=[],
        type=datafolders.text("a device's name or id"),
        metavar="DEVICE",
        help="a device (repeatable)",
    )
    b.add_argument(
        "--selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "devices with this label (repeatable; default: every device); devices online "
            "over MQTT are leased no tasks unless named with --device"
        ),
    )
    _max_size(b)
    _leases(b)
    b.set_defaults(func=command("hub.cli.bundles:export_bundles"))


def _agent_release_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "agent-releases", help="agent releases (scripts/build-agent-release): take and list"
    )
    releases = p.add_subparsers(required=True, metavar="ACTION")
    r = releases.add_parser(
        "upload",
        help="take a release folder: every file checked against its manifest, copied, and "
        "the manifest signed with the hub's key",
    )
    _data(r)
    _config(r)
    r.add_argument(
        "folder",
        type=datafolders.path("a release folder"),
        metavar="DIR",
        help="a folder build-agent-release made",
    )
    r.set_defaults(func=command("hub.cli.agentreleases:upload"))
    r = releases.add_parser("list", help="the agent releases taken")
    _data(r)
    _config(r)
    r.set_defaults(func=command("hub.cli.agentreleases:list_releases"))


def _leases(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lease",
        type=_duration,
        default=7 * 86400.0,
        help="how long tasks in the bundle are leased to the device: the courier's round "
        "trip, such as 3d or 14d (default 7d); a result later than that counts as late",
    )
    p.add_argument(
        "--tasks",
        type=int,
        default=100,
        metavar="N",
        help="queued tasks to lease to each device in its bundle, at most (default 100; 0: none)",
    )


def _duration(text: str) -> float:
    from outpost import durations

    try:
        return durations.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _server_name(text: str) -> str:
    from hub.initialise import server_name

    try:
        return server_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _max_size(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-size",
        type=_size,
        default=1 << 30,
        help="largest part file, e.g. 100M, 4G (default 1G)",
    )


def _size(text: str) -> int:
    from outpost.courier.parts import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=datafolders.argument, required=True, help="the hub's data folder")


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=datafolders.path("a settings file"),
        help="settings file (default: hub.toml in the data folder, if present)",
    )
