"""A throwaway PostgreSQL server for the tests and the replica demo: a cluster made with
`initdb` in a temporary folder, started with `pg_ctl` on a free loopback port, deleted at
the end.

It never uses a server the machine happens to run. The binaries come from PATH or from
Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin), which
`scripts/setup.sh --test-tools` (or `--postgres`) installs when missing. PostgreSQL
refuses to run as root, so as root the cluster is made and run as the `postgres` user
the package creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psycopg

from scripts.ports import free_port

SUPERUSER = "outpost"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return str(versions[-1])
    raise RuntimeError(
        f"{name} not found: install Debian's postgresql package (scripts/setup.sh --test-tools)"
    )


class ThrowawayPostgres:
    """One cluster, one superuser (`outpost`, trust auth on loopback only), one port."""

    def __init__(self, *, durable: bool = False) -> None:
        # durable: fsync and synchronous commit on, as a production server runs (the
        # capacity benchmark); tests and the demo keep nothing and skip them.
        self.durable = durable
        self.folder = Path(tempfile.mkdtemp(prefix="outpost-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, argv: Sequence[str]) -> None:
        command = list(argv)
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        # A session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground
        # group) must not shut the server down under the program that started it.
        done = subprocess.run(
            command, capture_output=True, text=True, cwd=self.folder, start_new_session=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        self._run(
            [
                _binary("initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-locale",
                "--encoding=UTF8",
                "--no-sync",
            ]
        )
        # Loopback only; the socket stays in the temp folder. Durability settings off
        # unless asked for: the tests kill hubs, never this server, and a throwaway
        # cluster has nothing to keep.
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port}"
            f" -c unix_socket_directories={self.folder}"
            " -c max_connections=300 -c shared_buffers=64MB"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            [
                _binary("pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.folder / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run([_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
