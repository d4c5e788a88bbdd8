"""Hub replicas as processes for tests and benchmarks: each with its own data folder
holding a copy of one fleet's PKI (as pods mounting one Secret), on one database."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from hub.broker.managed import BrokerSupervisor
from hub.cli import load_config
from hub.initialise import initialise
from hub.paths import HubPaths, link_cn
from tests.databases import hub_sql
from tests.soak import listening
from tests.support import REPO, eventually, free_port


class Replica:
    """`outpost-hub run` of one replica, as a child process the test kills and restarts."""

    def __init__(self, replica_id: str, paths: HubPaths, logs: Path) -> None:
        self.replica_id = replica_id
        self.holder = link_cn(replica_id)
        self.paths = paths
        self.logs = logs
        self.web_port = load_config(paths.root).web_port
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log_path = self.logs / f"{self.replica_id}-{self.starts}.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", "run", "--data", str(self.paths.root)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        process = self.process

        async def up() -> bool:
            assert process.poll() is None, log_path.read_text()
            return listening(self.web_port)

        await eventually(up, timeout=60, every=0.1, what=f"replica {self.replica_id}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def replica_folder(primary: HubPaths, folder: Path, replica_id: str, settings: str) -> HubPaths:
    """A replica's data folder: a copy of the fleet's PKI and its own hub.toml."""
    paths = HubPaths(folder)
    folder.mkdir(mode=0o700)
    shutil.copytree(primary.ca_cert.parent, paths.ca_cert.parent)
    paths.config.write_text(
        f"[hub]\nweb_port = {free_port()}\nreplica_id = {json.dumps(replica_id)}\n" + settings
    )
    return paths


def current_leader(database: str) -> tuple[str, int]:
    ((holder, epoch),) = hub_sql(database, "SELECT holder, epoch FROM leadership")
    return str(holder), int(epoch)


async def fleet_broker(
    folder: Path, replica_ids: Sequence[str]
) -> tuple[HubPaths, BrokerSupervisor, int]:
    """A new fleet's PKI in `folder` (the one every replica copies), and a Mosquitto for
    its replicas' links on a free loopback port, started; and that port."""
    primary = HubPaths(folder)
    initialise(primary, server_names=[])
    port = free_port()
    broker = BrokerSupervisor(
        primary,
        program="mosquitto",
        host="127.0.0.1",
        port=port,
        max_packet_bytes=load_config(primary.root).max_payload_bytes,
        replicas=replica_ids,
    )
    await broker.start()
    return primary, broker, port
