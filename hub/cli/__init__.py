"""`outpost-hub`, the hub's command line: `main` parses it (parser.py) and runs the command
(one module per group of commands, imported only when it runs: lazy.py), reporting the
errors a user can act on."""

from __future__ import annotations

import os
import sys
from typing import Any

from hub.cli.lazy import Command
from hub.cli.parser import build_parser
from outpost import logs

__all__ = ["load_config", "main", "render_fleet"]

# The parser under its former name: tests/integration/test_kubernetes_manifests.py reads
# the real flags through it.
_parser = build_parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost-hub` command."""
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # the registry, tokens and audit log are the hub's alone
    logs.configure(getattr(args, "log_level", None) or "info")
    func: Command = args.func
    try:
        if func.target != "hub.cli.database:init" and getattr(args, "data", None) is not None:
            from hub.cli.datafolder import check_initialised

            check_initialised(args.data)
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader left; nothing more to say
        _quiet_stdout()
        return 1
    except Exception as exc:
        status = _user_error(exc)
        if status is None:
            raise
        print(f"outpost-hub: error: {exc}", file=sys.stderr)
        return status


def _user_error(exc: Exception) -> int | None:
    """The exit status of an error the user can act on (its message says how): 1 for a
    refusal by a running hub, 2 for a mistake or a state of the data folder; None for a
    bug, which keeps its traceback. Imported here: only a failing command pays for them."""
    from hub.cli.remote import RemoteError, RemoteUsageError

    if isinstance(exc, RemoteError):
        return 2 if isinstance(exc, RemoteUsageError) else 1
    if isinstance(exc, OSError | ValueError):  # a file or folder it cannot use: named
        return 2
    from hub.api.server import PortInUseError
    from hub.broker.managed import BrokerStartError
    from hub.fleet.revocation import BrokerCrlError
    from hub.initialise import AlreadyInitialisedError
    from outpost import settings
    from outpost.datalock import AlreadyRunningError

    mistakes = (
        settings.SettingsError,
        AlreadyInitialisedError,
        BrokerStartError,
        AlreadyRunningError,
        PortInUseError,
        BrokerCrlError,
    )
    return 2 if isinstance(exc, mistakes) else None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that its flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def __getattr__(name: str) -> Any:
    # What other modules import from here, loaded when first asked for.
    if name == "load_config":
        from hub.cli.datafolder import load_config

        return load_config
    if name == "render_fleet":
        from hub.cli.devices import render_fleet

        return render_fleet
    raise AttributeError(name)
