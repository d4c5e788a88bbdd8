"""`outpost-hub`: initialise a hub, mint bootstrap tokens, list and revoke devices, run the
daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hub import apitokens, bootstrap, brokerconfig
from hub.api.models import DeviceOut
from hub.api.server import PortInUseError
from hub.app import Hub
from hub.broker import BrokerStartError
from hub.config import SECTION, HubConfig
from hub.enrollment import load_token_key
from hub.initialise import AlreadyInitialisedError, initialise
from hub.labels import parse_selector
from hub.paths import HubPaths
from hub.revocation import BrokerCrlError, Revoker, UnknownDeviceError
from hub.store import HubStore
from hub.store.engine import describe, is_postgres, open_engine, sqlite_path
from hub.store.transfer import copy_sqlite_to_postgres
from outpost import durations, files, logs, schema, settings, tls
from outpost.aio import cancel_until_done
from outpost.datalock import AlreadyRunningError, DataLock
from outpost.sdnotify import Notifier

logger = logging.getLogger("hub")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost-hub` command."""
    args = _parser().parse_args(argv)
    os.umask(0o077)  # the registry, tokens and audit log are the hub's alone
    logs.configure(getattr(args, "log_level", None) or "info")
    try:
        if args.func is not _init:
            _initialised(args.data)
        return int(args.func(args))
    except (
        settings.SettingsError,
        AlreadyInitialisedError,
        BrokerStartError,
        AlreadyRunningError,
        PortInUseError,
        BrokerCrlError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"outpost-hub: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpost-hub", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="create the fleet CA, certificates and signing keys")
    _data(p)
    p.add_argument(
        "--db",
        metavar="URL",
        help="keep the hub's data in this PostgreSQL database (postgresql://USER@HOST:PORT/DB)"
        " instead of hub.db: creates its schema and writes db_url into hub.toml",
    )
    p.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra DNS name or IP of the hub's server certificate (repeatable)",
    )
    p.set_defaults(func=_init)

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
    p.set_defaults(func=_enroll_token)

    p = sub.add_parser("run", help="run the hub (and its managed Mosquitto)")
    _data(p)
    _config(p)
    p.add_argument("--broker", help="use an external broker mqtts://HOST:PORT")
    p.add_argument("--mqtt-host", help="address of the managed broker's listener")
    p.add_argument("--mqtt-port", type=int, help="port of the managed broker's listener")
    p.add_argument("--web-host", help="address of the HTTPS endpoint")
    p.add_argument("--web-port", type=int, help="port of the HTTPS endpoint")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument("--log-format", choices=logs.LOG_FORMATS, help="json, text or auto")
    p.add_argument("--db", metavar="URL", help="database URL (db_url): postgresql://... or a path")
    p.add_argument(
        "--replica-id", help="run as this replica of several (replica_id; needs --db and --broker)"
    )
    p.set_defaults(func=_run)

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
        metavar="sqlite:PATH",
        help="the SQLite database to copy (default: hub.db in the data folder)",
    )
    m.add_argument("--to", dest="target", required=True, metavar="postgresql://...")
    m.set_defaults(func=_db_migrate)

    p = sub.add_parser("token", help="mint, list and revoke API tokens")
    tokens = p.add_subparsers(required=True, metavar="ACTION")
    t = tokens.add_parser("create", help="print a signed API token")
    _data(t)
    t.add_argument("--role", required=True, choices=apitokens.ROLES)
    t.add_argument(
        "--ttl",
        type=durations.parse,
        default=None,
        help="lifetime such as 15m (default: 15m; an --api-key 90d)",
    )
    t.add_argument("--subject", default=None, help="who will use it (default: the user name)")
    t.add_argument(
        "--api-key",
        action="store_true",
        help="a long-lived key for automation (up to 366 days) instead of a session",
    )
    t.set_defaults(func=_token_create)
    t = tokens.add_parser("revoke", help="revoke a token by its id (jti)")
    _data(t)
    t.add_argument("jti")
    t.set_defaults(func=_token_revoke)
    t = tokens.add_parser("list", help="list issued tokens (ids and grants, never the tokens)")
    _data(t)
    t.set_defaults(func=_token_list)

    p = sub.add_parser("devices", help="list the fleet registry")
    _data(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_devices)

    p = sub.add_parser("device", help="act on one device")
    device = p.add_subparsers(required=True, metavar="ACTION")
    d = device.add_parser(
        "revoke",
        help="revoke a device: the broker refuses its certificates, its connection is "
        "dropped and it cannot renew (works with the hub running or not)",
    )
    _data(d)
    _config(d)
    d.add_argument("device_id", metavar="ID", help="the device id, e.g. dev-0123456789ab")
    d.set_defaults(func=_device_revoke)

    p = sub.add_parser(
        "broker-config",
        help="write the configuration an external broker (Mosquitto or EMQX) needs to "
        "carry this hub's fleet: listener, ACL, CRL and certificates",
    )
    _data(p)
    _config(p)
    p.add_argument("--kind", required=True, choices=brokerconfig.KINDS, help="the broker")
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder to write (new or empty)"
    )
    p.add_argument(
        "--replica",
        action="append",
        default=[],
        metavar="ID",
        help="replica_id of a hub replica sharing the broker (repeatable)",
    )
    p.add_argument(
        "--listen",
        default=brokerconfig.DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where the broker listens (default {brokerconfig.DEFAULT_LISTEN})",
    )
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=_broker_config)
    return parser


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="the hub's data folder")


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="settings file (default: hub.toml in the data folder, if present)",
    )


def _initialised(data: Path) -> None:
    """Refuse a folder that is not an initialised hub's (a typo, say) by name, rather
    than create or read it as empty: only `init` makes one."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data} does not exist: check --data, or run `outpost-hub init`")
    if not HubPaths(data).ca_key.exists():
        raise FileNotFoundError(f"{data} is not a hub data folder: run `outpost-hub init`")


def load_config(
    data: Path, config: Path | None = None, overrides: dict[str, Any] | None = None
) -> HubConfig:
    """Load the hub's settings: file (explicit, or hub.toml in the data folder), then flags."""
    if config is None and HubPaths(data).config.exists():
        config = HubPaths(data).config
    return settings.load_file(HubConfig, config, SECTION, overrides or {})


def _init(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    if args.db is not None:
        if not is_postgres(args.db):
            raise ValueError(f"--db {describe(args.db)}: init --db takes a postgresql:// URL")
        if paths.config.exists():
            raise ValueError(f"{paths.config} exists: set db_url in it instead of --db")
        open_engine(args.db).close()  # reachable, and its schema made, before any key
    initialise(paths, server_names=args.san)
    print(f"initialised {paths.root}")
    if args.db is not None:
        # A JSON string is a TOML basic string.
        db_url = json.dumps(args.db)
        files.replace(paths.config, f"[hub]\ndb_url = {db_url}\n".encode(), files.PRIVATE)
        print(f"database: {describe(args.db)} (db_url in {paths.config})")
    print(f"fleet CA fingerprint: {tls.fingerprint(paths.ca_cert.read_bytes())}")
    return 0


def _db_migrate(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    source = sqlite_path(args.source) if args.source else paths.database
    if not is_postgres(args.target):
        raise ValueError(f"--to {describe(args.target)}: give a postgresql:// URL")
    # A hub writing meanwhile would leave its newest records behind.
    with DataLock.acquire(paths.root, "outpost-hub db migrate"):
        copied = copy_sqlite_to_postgres(source, args.target, paths.models)
    for c in copied:
        print(f"{c.table:<18} {c.rows:>10} rows")
    print(f"copied {source} into {describe(args.target)}")
    print(f'next: set db_url = "{describe(args.target)}" in {paths.config} (or run --db)')
    return 0


def _enroll_token(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    labels = parse_selector(args.label, "--label")
    ttl = args.ttl if args.ttl is not None else config.enroll_token_ttl
    token, claims = bootstrap.mint(
        load_token_key(paths),
        hub_url=config.hub_url,
        ca_fingerprint=tls.fingerprint(paths.ca_cert.read_bytes()),
        ttl=ttl,
        labels=labels,
    )
    with _store(paths, config) as store:
        store.add_enroll_token_sync(
            claims.jti, now=time.time(), expires_at=claims.expires_at, labels=labels
        )
    print(token)
    return 0


def _token_create(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    kind: apitokens.Kind = "api-key" if args.api_key else "session"
    default_ttl = apitokens.API_KEY_TTL_DEFAULT if args.api_key else apitokens.SESSION_TTL_DEFAULT
    token, principal = apitokens.mint(
        load_token_key(paths),
        role=args.role,
        subject=args.subject or getpass.getuser(),
        ttl=args.ttl if args.ttl is not None else default_ttl,
        kind=kind,
    )
    with _store(paths) as store:
        store.add_api_token_sync(apitokens.grant_record(principal))
    print(token)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    with _store(HubPaths(args.data)) as store:
        outcome = store.revoke_api_token_sync(args.jti, now=time.time())
    if outcome != "revoked":
        raise ValueError(f"cannot revoke {args.jti!r}: {outcome}")
    print(f"revoked {args.jti}")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    with _store(HubPaths(args.data)) as store:
        records = store.api_tokens_sync()
    print(f"{'JTI':<18} {'SUBJECT':<20} {'ROLE':<9} {'KIND':<8} {'EXPIRES':<20} REVOKED")
    for r in records:
        expires = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.expires_at))
        print(
            f"{r.jti:<18} {r.subject:<20} {r.role:<9} {r.kind:<8} {expires:<20} "
            f"{'yes' if r.revoked_at else 'no'}"
        )
    return 0


@contextlib.contextmanager
def _store(paths: HubPaths, config: HubConfig | None = None) -> Iterator[HubStore]:
    if not paths.ca_key.exists():
        raise FileNotFoundError(f"{paths.root} is not a hub data folder: run `outpost-hub init`")
    config = config or load_config(paths.root)
    store = HubStore(config.database(paths.database))
    try:
        yield store
    finally:
        store.close()


def _run(args: argparse.Namespace) -> int:
    overrides = {
        "broker": args.broker,
        "mqtt_host": args.mqtt_host,
        "mqtt_port": args.mqtt_port,
        "web_host": args.web_host,
        "web_port": args.web_port,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "db_url": args.db,
        "replica_id": args.replica_id,
    }
    config = load_config(args.data, args.config, overrides)
    logs.configure(config.log_level, fmt=config.log_format)
    # Read (and taken out of the environment, so Mosquitto does not answer it) before
    # anything starts: systemd's notify socket, if it started us.
    hub = Hub(HubPaths(args.data), config, notifier=Notifier.from_environ())
    return asyncio.run(_serve(hub))


async def _serve(hub: Hub) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()  # kept referenced until done

    def stop() -> None:
        hub.notifier.stopping()
        stopping.add(loop.create_task(cancel_until_done(task)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await hub.run()
    except asyncio.CancelledError:
        logger.info("hub stopped")
    return 0


def _devices(args: argparse.Namespace) -> int:
    with _store(HubPaths(args.data)) as store:
        devices = store.devices_sync()
    rows = [schema.dump(DeviceOut.of(d)) for d in devices]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(render_fleet(rows, now=time.time()))
    return 0


def _device_revoke(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    with _store(paths, config) as store:
        try:
            by = f"cli:{getpass.getuser()}"  # the registry records who revoked it
            done = asyncio.run(Revoker(paths, config, store).revoke(args.device_id, by=by))
        except UnknownDeviceError as exc:
            raise ValueError(str(exc)) from exc
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(done.revoked_at))
    if done.already_revoked:
        print(f"{done.device_id} was already revoked (at {when}); its CRL entries are rewritten")
    else:
        print(f"revoked {done.device_id}: {done.certificates} certificate(s) in the CRL")
    if not config.managed_broker and not done.broker_reloaded:
        print(
            "external broker: it was not told to re-read the CRL (broker_crl_path and "
            "broker_reload_command unset, or they failed: see the log); reload it by hand"
        )
    elif done.broker_reloaded:
        connection = (
            "its connection, if any, was closed"
            if done.disconnected
            else "its connection could not be closed (see the log)"
        )
        print(f"the broker reloaded the CRL; {connection}")
        if done.proof_failure is not None:
            print(
                f"outpost-hub: error: revocation NOT proven: {done.proof_failure}", file=sys.stderr
            )
            return 1
        print("proven: the broker refuses its certificates as revoked")
    else:
        print("the hub is not running: its broker reads the CRL when it starts")
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    request = brokerconfig.Request(
        kind=args.kind,
        out=args.out,
        replicas=tuple(dict.fromkeys(args.replica)),
        listen=brokerconfig.Listen.parse(args.listen),
        force=args.force,
    )
    with _store(paths, config) as store:
        written = brokerconfig.write(paths, config, store, request)
    for path in written:
        print(path)
    print(f"next: read {written[-1]}")
    return 0


def render_fleet(devices: list[dict[str, Any]], *, now: float) -> str:
    """Format devices (as the API returns them) as a table: device, profile, state
    (online, offline or revoked), last heartbeat, load, models, labels."""
    rows = [
        ("DEVICE", "PROFILE", "STATE", "LAST HEARTBEAT", "CPU %", "RSS MiB", "MODELS", "LABELS")
    ]
    for d in devices:
        beat = f"{now - d['last_heartbeat']:.1f} s ago" if d["last_heartbeat"] else "never"
        load = d["load"]
        cpu = f"{load['cpu_percent']:.0f}" if "cpu_percent" in load else "-"
        rss = f"{load['rss_bytes'] / 2**20:.0f}" if "rss_bytes" in load else "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items())) or "-"
        models = (
            ",".join(
                f"{m['name']}@{m['version']}" + ("" if m["state"] == "ready" else "(FAILED)")
                for m in d.get("models", [])
            )
            or "-"
        )
        # A revoked device is gone for good: not "offline", which says it may come back.
        state = "revoked" if d.get("revoked") else "online" if d["online"] else "offline"
        rows.append((d["id"], d["profile"], state, beat, cpu, rss, models, labels))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


if __name__ == "__main__":
    sys.exit(main())
