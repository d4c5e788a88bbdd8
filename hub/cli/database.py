"""`outpost-hub init` (the data folder, and perhaps its PostgreSQL database) and
`outpost-hub db migrate` (a stopped hub's SQLite data copied into PostgreSQL)."""

from __future__ import annotations

import argparse
import json

from hub.initialise import AlreadyInitialisedError, initialise
from hub.paths import HubPaths
from hub.store.engine import describe, is_postgres, open_engine, sqlite_path
from hub.store.transfer import copy_sqlite_to_postgres
from outpost import datafolders, files, tls
from outpost.datalock import DataLock


def init(args: argparse.Namespace) -> int:
    """Initialise a data folder (and, with `--db`, its PostgreSQL database)."""
    paths = HubPaths(args.data)
    # Every refusal of the folder comes before the database is touched: a folder refused
    # after `--db` made its schema left tables behind in a database no hub uses.
    if paths.root.exists() and not paths.root.is_dir():
        raise ValueError(f"{paths.root} is a file, not a folder: choose another --data")
    if problem := datafolders.hub_folder_problem(paths.root):
        raise ValueError(problem)
    if paths.pki.exists():  # `initialise` checks again, under the lock (two inits at once)
        raise AlreadyInitialisedError(
            f"{paths.root} is already initialised (found {paths.pki.name}/); "
            "refusing to overwrite its keys"
        )
    if args.db is not None:
        if not is_postgres(args.db):
            raise ValueError(f"--db {describe(args.db)}: init --db takes a postgresql:// URL")
        if paths.config.exists():
            raise ValueError(f"{paths.config} exists: set db_url in it instead of --db")
        open_engine(args.db).close()  # reachable, and its schema made, before any key
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with DataLock.acquire(paths.root, "outpost-hub init"):  # two inits at once: one wins
        initialise(paths, server_names=args.san)
    print(f"initialised {paths.root}")
    if args.db is not None:
        # A JSON string is a TOML basic string.
        db_url = json.dumps(args.db)
        files.replace(paths.config, f"[hub]\ndb_url = {db_url}\n".encode(), files.PRIVATE)
        print(f"database: {describe(args.db)} (db_url in {paths.config})")
    print(f"fleet CA fingerprint: {tls.fingerprint(paths.ca_cert.read_bytes())}")
    return 0


def migrate(args: argparse.Namespace) -> int:
    """Copy a stopped hub's SQLite data into an empty PostgreSQL database."""
    paths = HubPaths(args.data)
    source = sqlite_path(args.source) if args.source else paths.database
    if not is_postgres(args.target):
        raise ValueError(f"--to {describe(args.target)}: give a postgresql:// URL")
    # A hub writing meanwhile would leave its newest records behind.
    with DataLock.acquire(paths.root, "outpost-hub db migrate"):
        copied = copy_sqlite_to_postgres(source, args.target, paths.models, paths.agent_releases)
    for c in copied:
        print(f"{c.table:<18} {c.rows:>10} rows")
    print(f"copied {source} into {describe(args.target)}")
    print(f'next: set db_url = "{describe(args.target)}" in {paths.config} (or run --db)')
    return 0
