"""`outpost-hub`: initialise a hub, mint bootstrap tokens, list devices, run the daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hub import bootstrap
from hub.app import Hub
from hub.broker import BrokerStartError
from hub.config import SECTION, HubConfig
from hub.enrollment import load_token_key
from hub.initialise import AlreadyInitialisedError, initialise
from hub.paths import HubPaths
from hub.store import HubStore
from outpost import durations, logs, settings, tls

logger = logging.getLogger("hub")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost-hub` command."""
    args = _parser().parse_args(argv)
    logs.configure(getattr(args, "log_level", None) or "info")
    try:
        return int(args.func(args))
    except (
        settings.SettingsError,
        AlreadyInitialisedError,
        BrokerStartError,
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
    p.set_defaults(func=_run)

    p = sub.add_parser("devices", help="list the fleet registry")
    _data(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_devices)
    return parser


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="the hub's data folder")


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        help="settings file (default: hub.toml in the data folder, if present)",
    )


def load_config(
    data: Path, config: Path | None = None, overrides: dict[str, Any] | None = None
) -> HubConfig:
    """Load the hub's settings: file (explicit, or hub.toml in the data folder), then flags."""
    if config is None and HubPaths(data).config.exists():
        config = HubPaths(data).config
    return settings.load_file(HubConfig, config, SECTION, overrides or {})


def _init(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    initialise(paths, server_names=args.san)
    print(f"initialised {paths.root}")
    print(f"fleet CA fingerprint: {tls.fingerprint(paths.ca_cert.read_bytes())}")
    return 0


def _enroll_token(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    config = load_config(args.data, args.config)
    labels = dict(_label(item) for item in args.label)
    ttl = args.ttl if args.ttl is not None else config.enroll_token_ttl
    token, claims = bootstrap.mint(
        load_token_key(paths),
        hub_url=config.hub_url,
        ca_fingerprint=tls.fingerprint(paths.ca_cert.read_bytes()),
        ttl=ttl,
        labels=labels,
    )
    store = HubStore(paths.database)
    try:
        store.add_enroll_token_sync(
            claims.jti, now=time.time(), expires_at=claims.expires_at, labels=labels
        )
    finally:
        store.close()
    print(token)
    return 0


def _label(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--label wants KEY=VALUE, got {item!r}")
    return key, value


def _run(args: argparse.Namespace) -> int:
    overrides = {
        "broker": args.broker,
        "mqtt_host": args.mqtt_host,
        "mqtt_port": args.mqtt_port,
        "web_host": args.web_host,
        "web_port": args.web_port,
        "log_level": args.log_level,
    }
    config = load_config(args.data, args.config, overrides)
    logs.configure(config.log_level)
    hub = Hub(HubPaths(args.data), config)
    return asyncio.run(_serve(hub))


async def _serve(hub: Hub) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await hub.run()
    except asyncio.CancelledError:
        logger.info("hub stopped")
    return 0


def _devices(args: argparse.Namespace) -> int:
    store = HubStore(HubPaths(args.data).database)
    try:
        devices = store.devices_sync()
    finally:
        store.close()
    if args.json:
        print(json.dumps([d.__dict__ for d in devices], indent=2))
        return 0
    print(render_fleet(devices, now=time.time()))
    return 0


def render_fleet(devices: list[Any], *, now: float) -> str:
    """Format the registry as a fixed-width table (device, profile, online, heartbeat)."""
    rows = [("DEVICE", "PROFILE", "ONLINE", "LAST HEARTBEAT", "CPU %", "RSS MiB", "LABELS")]
    for d in devices:
        beat = f"{now - d.last_heartbeat:.1f} s ago" if d.last_heartbeat else "never"
        cpu = f"{d.load['cpu_percent']:.0f}" if "cpu_percent" in d.load else "-"
        rss = f"{d.load['rss_bytes'] / 2**20:.0f}" if "rss_bytes" in d.load else "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(d.labels.items())) or "-"
        rows.append((d.device_id, d.profile, "yes" if d.online else "no", beat, cpu, rss, labels))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


if __name__ == "__main__":
    sys.exit(main())
