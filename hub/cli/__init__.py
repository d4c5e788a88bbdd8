"""`outpost-hub`, the hub's command line: `main` parses it (parser.py) and runs the command
(one module per group of commands), reporting the errors a user can act on."""

from __future__ import annotations

import os
import sys

from hub.api.server import PortInUseError
from hub.broker.managed import BrokerStartError
from hub.cli import database
from hub.cli.datafolder import check_initialised, load_config
from hub.cli.devices import render_fleet
from hub.cli.parser import build_parser
from hub.cli.remote import RemoteError
from hub.fleet.revocation import BrokerCrlError
from hub.initialise import AlreadyInitialisedError
from outpost import logs, settings
from outpost.datalock import AlreadyRunningError

__all__ = ["load_config", "main", "render_fleet"]

# The parser under its former name: tests/integration/test_kubernetes_manifests.py reads
# the real flags through it.
_parser = build_parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost-hub` command."""
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # the registry, tokens and audit log are the hub's alone
    logs.configure(getattr(args, "log_level", None) or "info")
    try:
        if args.func is not database.init and getattr(args, "data", None) is not None:
            check_initialised(args.data)
        return int(args.func(args))
    except RemoteError as exc:
        print(f"outpost-hub: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
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
