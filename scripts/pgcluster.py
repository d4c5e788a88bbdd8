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

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import psutil
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
        self._launched = False
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.folder, "postgres", "postgres")

    def _run(self, argv: Sequence[str]) -> None:
        command = list(argv)
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        # A session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground
        # group) must not shut the server down under the program that started it.
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.folder,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate()
        except BaseException:
            # Interrupted: the whole group, as killing `runuser` alone leaves its command
            # running (a server pg_ctl launched has a session of its own: `stop` ends it).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{stdout}\n{stderr}")

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
        self._launched = True  # from here on a server may run: `stop` looks for it
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
        """Stop the server if one runs, whatever state `start` got to (a Ctrl-C in
        `pg_ctl -w start` kills pg_ctl, not the server it launched), and delete the
        folder."""
        try:
            if self._launched and self._server_may_run():
                self._run([_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _server_may_run(self) -> bool:
        """Whether a server of this cluster runs or is still starting: its pid file,
        once it wrote one; before that, while a process of this data folder (the server,
        or a `pg_ctl` that outlived its `runuser`) lives, until the file appears."""
        deadline = time.monotonic() + 30
        while not (self.data / "postmaster.pid").exists():
            starting = [
                p
                for p in psutil.process_iter(["cmdline"])
                if str(self.data) in " ".join(p.info["cmdline"] or [])
            ]
            if not starting or time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # polling for the starting server's pid file
        return True
