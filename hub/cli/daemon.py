"""`outpost-hub run`: the hub daemon in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from hub.app import Hub
from hub.cli.datafolder import load_config
from hub.paths import HubPaths
from outpost import heap, logs
from outpost.aio import cancel_until_done
from outpost.sdnotify import Notifier

logger = logging.getLogger("hub")


def run(args: argparse.Namespace) -> int:
    """Run the hub in the foreground until a signal stops it."""
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
    """Run `hub`, cancelling it on SIGINT or SIGTERM."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()  # kept referenced until done

    def stop() -> None:
        hub.notifier.stopping()
        stopping.add(loop.create_task(cancel_until_done(task)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    heap.settle()  # its code, before it builds anything it may replace (outpost/heap.py)
    try:
        await hub.run()
    except asyncio.CancelledError:
        logger.info("hub stopped")
    return 0
