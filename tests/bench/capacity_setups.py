"""The configurations the capacity benchmark measures (tests/bench/bench_capacity.py):
a hub on SQLite with its own broker, or replicas on a throwaway PostgreSQL sharing one
Mosquitto; and the hub's database read from outside, as an operator's query would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from hub.broker.managed import BrokerSupervisor
from hub.cli import load_config
from hub.paths import HubPaths
from hub.store.engine import is_postgres
from tests.bench.common import make_hub
from tests.replicaset import Replica, fleet_broker, replica_folder
from tests.support import REPO

# Budgets lifted: the simulator's devices all come from loopback, and the benchmark
# polls the API.
SETTINGS = (
    "api_rate_per_s = 1e9\napi_rate_burst = 100000\n"
    "device_msgs_per_s = 1e9\ndevice_msgs_burst = 1000000\n"
    "device_bytes_per_s = 1000000000\ndevice_queue = 1000000\n"
)


class Database:
    """The hub's database read from outside, as an operator's query would."""

    def __init__(self, target: Path | str) -> None:
        self._pg: psycopg.Connection[Any] | None = None
        self._sqlite: sqlite3.Connection | None = None
        if isinstance(target, str) and is_postgres(target):
            self._pg = psycopg.connect(target, autocommit=True)
        else:
            self._sqlite = sqlite3.connect(
                f"file:{target}?mode=ro", uri=True, timeout=10, check_same_thread=False
            )

    def _query(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._pg is not None:
            return self._pg.execute(statement.replace("?", "%s"), params).fetchall()
        assert self._sqlite is not None
        return self._sqlite.execute(statement, params).fetchall()

    async def query(self, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return await asyncio.to_thread(self._query, statement, params)

    async def online(self) -> int:
        ((n,),) = await self.query("SELECT count(*) FROM devices WHERE online = 1")
        return int(n)

    async def last_heartbeat(self, device_id: str) -> float | None:
        rows = await self.query(
            "SELECT last_heartbeat FROM devices WHERE device_id = ?", (device_id,)
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    async def tasks_ended(self, ids: list[str]) -> int:
        ended = 0
        for first in range(0, len(ids), 500):
            chunk = tuple(ids[first : first + 500])
            marks = ",".join("?" * len(chunk))
            ((n,),) = await self.query(
                f"SELECT count(*) FROM tasks WHERE task_id IN ({marks})"  # noqa: S608
                " AND state IN ('succeeded', 'failed', 'expired', 'cancelled')",
                chunk,
            )
            ended += int(n)
        return ended

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()


@dataclass
class Setup:
    """One configuration under test: its replicas, broker, database and API."""

    name: str
    replicas: list[Replica]
    broker_pid: Any  # () -> int | None: the broker may be restarted
    broker_port: int
    broker_paths: HubPaths  # the data folder whose broker/ the fleet's Mosquitto runs from
    ca_cert: Path
    ca_key: Path
    database: Database
    token: str
    urls: list[str]
    extra: list[Any] = field(default_factory=list)  # what to stop at the end


def _token(data: Path) -> str:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "hub.cli", "token", "create", "--data", str(data)),
            *("--role", "operator", "--subject", "bench", "--ttl", "4h"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@contextlib.asynccontextmanager
async def sqlite_setup(root: Path) -> AsyncIterator[Setup]:
    paths, config = make_hub(root / "hub")
    replica = Replica("solo", paths, root)
    await replica.start()
    database = Database(paths.root / "hub.db")

    def broker_pid() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((paths.broker_dir / "mosquitto.pid").read_text())
        return None

    try:
        yield Setup(
            "SQLite, 1 replica",
            [replica],
            broker_pid,
            config.mqtt_port,
            paths,
            paths.ca_cert,
            paths.ca_key,
            database,
            _token(paths.root),
            [config.hub_url],
        )
    finally:
        database.close()
        stop_replica(replica)


@contextlib.asynccontextmanager
async def postgres_setup(root: Path, count: int) -> AsyncIterator[Setup]:
    from scripts.pgcluster import ThrowawayPostgres

    server = ThrowawayPostgres(durable=True)
    await asyncio.to_thread(server.start)
    replicas: list[Replica] = []
    broker: BrokerSupervisor | None = None
    database: Database | None = None
    try:
        url = await asyncio.to_thread(server.new_database)
        ids = [f"r{n + 1}" for n in range(count)]
        primary, broker, broker_port = await fleet_broker(root / "pki", ids)
        settings = (
            f'broker = "mqtts://127.0.0.1:{broker_port}"\ndb_url = {json.dumps(url)}\n' + SETTINGS
        )
        replicas = [Replica(r, replica_folder(primary, root / r, r, settings), root) for r in ids]
        for replica in replicas:  # one after the other: the first migrates the schema
            await replica.start()
        database = Database(url)
        supervisor = broker
        yield Setup(
            f"PostgreSQL, {count} replica{'s' if count > 1 else ''}",
            replicas,
            lambda: supervisor.pid,
            broker_port,
            primary,
            primary.ca_cert,
            primary.ca_key,
            database,
            _token(replicas[0].paths.root),
            [load_config(r.paths.root).hub_url for r in replicas],
        )
    finally:
        if database is not None:
            database.close()
        for replica in replicas:
            stop_replica(replica)
        if broker is not None:
            await broker.stop()
        await asyncio.to_thread(server.stop)


def stop_replica(replica: Replica) -> None:
    process = replica.process
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
