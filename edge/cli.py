"""`outpost-agent`: enroll this device with a hub, run the agent daemon, renew its
certificate."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edge.config import SECTION, AgentConfig
from edge.identity import DevicePaths, Identity, NotEnrolledError
from edge.inference.runtime import RUNTIMES
from edge.profile import ProfileError, load_profile
from outpost import __version__, datafolders, heap, logs, settings
from outpost.aio import cancel_until_done
from outpost.datalock import AlreadyRunningError
from outpost.sdnotify import Notifier

if TYPE_CHECKING:
    from edge.agent import Agent

logger = logging.getLogger("edge")


class CliError(RuntimeError):
    """A command failed for a reason the user can act on; the message says which."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `outpost-agent` command."""
    args = _parser().parse_args(argv)
    # Everything the agent creates (store, key, socket) is its own: results and keys
    # are nobody else's business on a shared device.
    os.umask(0o077)
    logs.configure(getattr(args, "log_level", None) or "info")
    try:
        return int(args.func(args))
    except (
        CliError,
        ProfileError,
        NotEnrolledError,
        settings.SettingsError,
        AlreadyRunningError,
    ) as exc:
        print(f"outpost-agent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a data folder it cannot use (a file, read-only): named
        logger.debug("the error in full", exc_info=True)
        print(f"outpost-agent: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpost-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("enroll", help="get this device's certificate from the hub")
    token = p.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="bootstrap token from `outpost-hub enroll-token`")
    token.add_argument(
        "--token-file",
        type=datafolders.path("the file holding the token"),
        help="file holding the token (keeps it out of the process list)",
    )
    _data(p)
    p.add_argument(
        "--profile",
        type=datafolders.text("a shipped profile's name or a profile file"),
        required=True,
        help="device profile: a shipped profile's name (raspberry-pi-4, ...) or a file",
    )
    p.add_argument(
        "--name",
        help="the name this device asks for (default: the host name); the hub appends "
        "-2, -3, ... if another device has it",
    )
    p.set_defaults(func=_enroll)

    p = sub.add_parser(
        "renew",
        help="renew the device certificate now (the daemon does it by itself at two thirds "
        "of its life)",
    )
    _data(p)
    p.set_defaults(func=_renew)

    p = sub.add_parser("run", help="run the agent daemon")
    _data(p)
    p.add_argument(
        "--config",
        type=datafolders.path("a settings file"),
        help="settings file (default: agent.toml in the data folder, if present)",
    )
    p.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats")
    p.add_argument(
        "--broker",
        # Empty, it would read as not given: the enrolled broker would be used instead.
        type=datafolders.text("the broker's URL, mqtts://HOST:PORT"),
        help="override the broker, mqtts://HOST:PORT",
    )
    p.add_argument(
        "--log-level", type=str.lower, choices=logs.LOG_LEVELS, help="debug, info, warning or error"
    )
    p.add_argument("--log-format", choices=logs.LOG_FORMATS, help="json, text or auto")
    p.set_defaults(func=_run)

    p = sub.add_parser("models", help="install and list the device's models")
    models = p.add_subparsers(required=True, metavar="ACTION")
    m = models.add_parser(
        "install", help="install model bundle folders (model.tflite, model.json, sample.json)"
    )
    m.add_argument(
        "bundles",
        type=datafolders.path("a bundle folder"),
        nargs="+",
        help="bundle folders, e.g. models/x/1.0.0",
    )
    _data(m)
    m.add_argument(
        "--no-activate", action="store_true", help="install without making it the active version"
    )
    m.set_defaults(func=_models_install)
    m = models.add_parser("list", help="list installed models and their active versions")
    _data(m)
    m.set_defaults(func=_models_list)

    p = sub.add_parser(
        "selfcheck",
        help="check that this install can run on the data folder, touching nothing: "
        "imports, the store migrated on a copy, every model's sample (exit 1 if not)",
    )
    _data(p)
    p.add_argument(
        "--runtime",
        default="auto",
        choices=("auto", *RUNTIMES),
        help="inference runtime to load models on (default auto)",
    )
    p.set_defaults(func=_selfcheck)

    p = sub.add_parser(
        "bundle", help="sync by carried files where there is no link (courier bundles)"
    )
    bundles = p.add_subparsers(required=True, metavar="ACTION")
    b = bundles.add_parser(
        "export",
        help="write what the hub has not acknowledged, signed and encrypted for the hub",
    )
    _data(b)
    b.add_argument(
        "--to",
        type=datafolders.path("the folder to write the parts in"),
        required=True,
        help="folder to write the parts in",
    )
    b.add_argument("--max-size", default="1G", help="largest part file, e.g. 100M, 4G (default 1G)")
    b.add_argument(
        "--max-records",
        type=int,
        default=100_000,
        help="records in one bundle, at most (default 100000: about 100 MiB of memory while "
        "it is made); the rest go in the next, after this one's ack",
    )
    b.set_defaults(func=_bundle_export)
    b = bundles.add_parser("import", help="apply the hub's bundle for this device (acks, policy)")
    _data(b)
    b.add_argument(
        "paths",
        type=datafolders.path("a part file or a folder"),
        nargs="+",
        help="part files, or folders holding them",
    )
    b.set_defaults(func=_bundle_import)
    return parser


def _selfcheck(args: argparse.Namespace) -> int:
    from edge import selfcheck

    checks = selfcheck.run_checks(_enrolled(args.data), args.runtime)
    for check in checks:
        print(check.line())
    failed = [c for c in checks if not c.ok]
    print(f"selfcheck {'FAILED: ' + str(len(failed)) + ' of ' if failed else 'passed: '}"
          f"{len(checks)} checks")  # fmt: skip
    return 1 if failed else 0


def _bundle_export(args: argparse.Namespace) -> int:
    from edge import bundlecli

    try:
        if args.max_records < 1:
            raise bundlecli.BundleCliError("--max-records must be at least 1")
        size = bundlecli.parse_size(args.max_size)
        return bundlecli.export(args.data, args.to, size, args.max_records)
    except bundlecli.BundleCliError as exc:
        raise CliError(str(exc)) from exc


def _bundle_import(args: argparse.Namespace) -> int:
    from edge import bundlecli

    try:
        return bundlecli.import_(args.data, args.paths)
    except bundlecli.BundleCliError as exc:
        raise CliError(str(exc)) from exc


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=datafolders.argument, required=True, help="the agent's data folder"
    )


def _enrolled(data: Path) -> DevicePaths:
    """The paths of an enrolled data folder; a folder that is not one (a typo, say) is
    refused by name rather than created or read as empty. Only `enroll` makes one."""
    paths = DevicePaths(data)
    if data.exists() and not data.is_dir():
        raise CliError(f"{data} is a file, not a folder: check --data")
    if not data.is_dir():
        raise CliError(f"{data} does not exist: check --data, or run `outpost-agent enroll`")
    if not paths.identity.exists():
        raise CliError(f"{data} is not an enrolled agent folder: run `outpost-agent enroll`")
    return paths


def _models_install(args: argparse.Namespace) -> int:
    from edge.inference.directory import ModelDirectory
    from outpost.modelbundle import BundleError

    directory = ModelDirectory(_enrolled(args.data).models)
    # All or nothing: a typo in the last folder must not leave the first ones installed
    # (and, unless --no-activate, serving) behind an error.
    try:
        bundles = directory.installable(args.bundles)
    except BundleError as exc:
        raise CliError(f"{exc}; nothing was installed") from exc
    for bundle in bundles:
        try:
            installed = directory.install(bundle.folder, activate=not args.no_activate)
        except BundleError as exc:  # changed since it was checked: said, the rest not done
            raise CliError(str(exc)) from exc
        m = installed.manifest
        print(f"installed {m.name} {m.version} (sha256 {m.sha256[:16]}..., {m.size} bytes)")
    print("a running agent loads new models when it restarts")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from edge.inference.directory import ModelDirectory

    directory = ModelDirectory(_enrolled(args.data).models)
    entries = directory.entries()
    serving = {e.name for e in entries}
    # Installed, none active: shadow candidates, or `install --no-activate` of a new model.
    candidates = [
        (p.name, directory.versions(p.name))
        for p in (sorted(directory.root.iterdir()) if directory.root.is_dir() else [])
        if p.is_dir() and p.name not in serving and directory.versions(p.name)
    ]
    if not entries and not candidates:
        print("no models installed")
    for e in entries:
        state = e.error or (e.bundle.manifest.sha256[:16] + "..." if e.bundle else "")
        others = [v for v in directory.versions(e.name) if v != e.version]
        kept = f" (also kept: {', '.join(others)})" if others else ""
        print(f"{e.name} {e.version}{kept}  {state}")
    for name, versions in candidates:
        print(f"{name} none active (installed: {', '.join(versions)})")
    return 0


def _enroll(args: argparse.Namespace) -> int:
    # Imported here: certificate handling and JWTs are needed once, at enrollment, and
    # the running daemon need not carry them in memory.
    from edge import enrollcli
    from edge.enroll import EnrollError

    try:
        return enrollcli.enroll_folder(args)
    except (EnrollError, enrollcli.EnrollCliError) as exc:
        raise CliError(str(exc)) from exc


def _renew(args: argparse.Namespace) -> int:
    from edge.renewal import RenewalError, renew

    paths = DevicePaths(args.data)
    identity = Identity.load(paths)
    try:
        renewed = asyncio.run(renew(paths, identity))
    except RenewalError as exc:
        raise CliError(str(exc)) from exc
    until = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(renewed.cert_not_after))
    print(f"renewed the certificate of {renewed.device_id}; valid until {until}")
    print("a running agent uses it from its next connection")
    return 0


# Bytes of a Unix socket's path, at most (sun_path holds 108 on Linux, the last a NUL);
# the local API binds `agent.sock.new` and renames it to `agent.sock`.
MAX_SOCKET_PATH = 107


def _run(args: argparse.Namespace) -> int:
    paths = DevicePaths(args.data)
    staging = len(os.fsencode(paths.socket.absolute())) + len(".new")
    if staging > MAX_SOCKET_PATH:
        raise CliError(
            f"the local API's socket {paths.socket} would be too long a path for a Unix "
            f"socket ({staging} bytes with its staging name, at most {MAX_SOCKET_PATH}): "
            "give the agent a shorter data folder"
        )
    path = args.config if args.config else (paths.config if paths.config.exists() else None)
    config = settings.load_file(
        AgentConfig,
        path,
        SECTION,
        {
            "heartbeat_interval": args.heartbeat_interval,
            "broker": args.broker,
            "log_level": args.log_level,
            "log_format": args.log_format,
        },
    )
    logs.configure(config.log_level, fmt=config.log_format)
    identity = Identity.load(paths)
    profile = load_profile(paths.profile)
    notifier = Notifier.from_environ()  # systemd's notify socket, if it started us
    agent = _daemon()(paths, config, identity, profile, notifier=notifier)
    return asyncio.run(_serve(agent))


def _daemon() -> type[Agent]:
    """Import the daemon: only `run` needs it (the other commands start in a fraction
    of the time without its store, MQTT and web libraries)."""
    from edge.agent import Agent

    return Agent


async def _serve(agent: Agent) -> int:
    from edge.agentupdate import EXIT_RESTART, RestartRequested  # imported with the daemon
    from edge.store.errors import StoreKeyError

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()  # kept referenced until done

    def stop() -> None:
        agent.notifier.stopping()
        stopping.add(loop.create_task(cancel_until_done(task)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    heap.settle()  # its code, before it builds anything it may replace (outpost/heap.py)
    try:
        await agent.run()
    except asyncio.CancelledError:
        logger.info("agent stopped")
    except StoreKeyError as exc:  # store.key lost or replaced: said, nothing touched
        raise CliError(str(exc)) from exc
    except RestartRequested as exc:
        # The launcher starts PREFIX/current, now the new version, at once, in the same
        # service. No STOPPING=1: systemd (NotifyAccess=all) would take the service for
        # stopping, ignore the new version's READY=1 and kill both after TimeoutStopSec.
        agent.notifier.status(f"restarting into agent {exc.version}")
        logger.warning("%s", exc)
        return EXIT_RESTART
    return 0


if __name__ == "__main__":
    sys.exit(main())
