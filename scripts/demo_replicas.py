"""The demo's hub as replicas (`scripts/demo --replicas N`): a throwaway PostgreSQL, one
Mosquitto configured by `outpost-hub broker-config`, and N `outpost-hub run --replica-id`
processes, each with its own data folder holding a copy of one PKI (as pods mounting one
Secret). Mid-run the leading replica is killed with SIGKILL; another takes the lead and
the fleet goes on: the broker's shared subscription gives the survivors every device
message, and the database holds everything a replica knew."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hub.broker.managed import find_program
from hub.paths import HubPaths
from scripts.pgcluster import ThrowawayPostgres
from scripts.ports import free_port

KILL_AT_S = 8.0  # seconds into the fleet view when the leading replica is killed


@dataclass
class Replica:
    name: str
    folder: Path
    web_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.web_port}"


@dataclass
class ReplicaHub:
    """Everything the replica demo runs besides the agents; `hub_dir` is the folder the
    demo's `outpost-hub` commands use (the replica that is never killed)."""

    database: ThrowawayPostgres
    broker_port: int
    replicas: list[Replica]
    killed: Replica | None = None
    killed_at: float = 0.0
    lead_taken_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def survivor(self) -> Replica:
        return self.replicas[-1]

    @property
    def hub_dir(self) -> Path:
        return self.survivor.folder

    def leader(self, metrics: Callable[[str], bytes]) -> str | None:
        """The replica whose /metrics (`metrics(url)`) says it leads, if one answers so."""
        for replica in self.replicas:
            if replica is self.killed:
                continue
            with contextlib.suppress(OSError):
                if b"\noutpost_hub_leader 1.0" in metrics(replica.url):
                    return replica.name
        return None

    def fail_over(
        self, elapsed: float, metrics: Callable[[str], bytes], step: Callable[[str], None]
    ) -> str:
        """Kill the leader once `KILL_AT_S` into the run; a line on the replicas' state."""
        if self.killed is None and elapsed >= KILL_AT_S:
            leading = self.leader(metrics)
            # The leader, unless it is the replica the demo talks to: then the first.
            victim = next((r for r in self.replicas[:-1] if r.name == leading), self.replicas[0])
            if victim.process is not None:
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait(10)
                self.killed, self.killed_at = victim, time.monotonic()
                role = "the leader" if victim.name == leading else "not the leader"
                step(f"killing replica {victim.name} ({role}) with SIGKILL")
        leading = self.leader(metrics)
        if self.killed is not None and self.lead_taken_after is None and leading is not None:
            self.lead_taken_after = time.monotonic() - self.killed_at
            step(f"replica {leading} took the lead {self.lead_taken_after:.1f} s after the kill")
        states = ", ".join(
            f"{r.name} {'killed' if r is self.killed else 'up'}"
            + (" (leader)" if r.name == leading else "")
            for r in self.replicas
        )
        return f"hub replicas on PostgreSQL: {states}"

    def stop(self) -> None:
        self.database.stop()


def start(
    data: Path,
    logs: Path,
    count: int,
    children: list[subprocess.Popen[bytes]],
    run: Callable[..., str],
    step: Callable[[str], None],
    bin_dir: Path,
    wait_healthy: Callable[[str, Path, subprocess.Popen[bytes], Path], None],
) -> ReplicaHub:
    step("starting a throwaway PostgreSQL (initdb + pg_ctl, loopback only)")
    database = ThrowawayPostgres()
    try:
        database.start()  # inside: a Ctrl-C while it starts stops what it started
        url = database.new_database()
        source = data / "hub"
        run(str(bin_dir / "outpost-hub"), "init", "--data", str(source), "--db", url)
        names = [chr(ord("a") + n) for n in range(count)]
        broker_port = free_port()
        broker_dir = data / "broker"
        run(
            str(bin_dir / "outpost-hub"),
            *("broker-config", "--data", str(source), "--kind", "mosquitto"),
            *("--out", str(broker_dir), "--listen", f"127.0.0.1:{broker_port}"),
            *(a for name in names for a in ("--replica", name)),
        )
        broker_log = logs / "mosquitto.log"
        broker = subprocess.Popen(
            [find_program("mosquitto"), "-c", str(broker_dir / "mosquitto.conf")],
            stdout=broker_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the demo, which stops this
        )
        children.append(broker)
        step(
            f"one Mosquitto for all replicas on mqtts://127.0.0.1:{broker_port}, configured by "
            f"`outpost-hub broker-config` in {broker_dir}"
        )
        replicas = [Replica(name, data / f"replica-{name}", free_port()) for name in names]
        public = replicas[-1].url  # devices download models through the one never killed
        for replica in replicas:
            shutil.copytree(
                HubPaths(source).ca_cert.parent, HubPaths(replica.folder).ca_cert.parent
            )
            HubPaths(replica.folder).config.write_text(
                f"[hub]\nweb_port = {replica.web_port}\npublic_url = {json.dumps(public)}\n"
                f'broker = "mqtts://127.0.0.1:{broker_port}"\ndb_url = {json.dumps(url)}\n'
                f'replica_id = "{replica.name}"\n'
            )
        ca = HubPaths(source).ca_cert
        for replica in replicas:  # one after another: the first to start leads
            log = logs / f"hub-{replica.name}.log"
            replica.process = subprocess.Popen(
                [str(bin_dir / "outpost-hub"), "run", "--data", str(replica.folder)],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the demo, which stops this
            )
            children.append(replica.process)
            wait_healthy(replica.url, ca, replica.process, log)
            step(f"replica {replica.name}: {replica.url} (log: {log})")
    except BaseException:  # Ctrl-C or a failed step: the cluster goes with the demo
        database.stop()
        raise
    return ReplicaHub(database, broker_port, replicas)
