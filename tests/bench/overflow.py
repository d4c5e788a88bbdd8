"""More brokers for a simulated fleet than one broker process may hold here: each extra
Mosquitto is bridged to the fleet's own broker (the one the hub's replicas use), as a
broker cluster would carry devices connected to other nodes.

One Mosquitto holds a socket per device, within the open-file limit it inherits; where
that limit cannot be raised (a container's hard limit of 20,000, say), a fleet step past
it could not be run at all. An overflow broker takes the devices of the simulator's
later workers and forwards their `up` messages to the fleet's broker, and every `down`
message back, over one mTLS bridge connection authenticated like any client of the
fleet's broker (its certificate's CN, given rights in that broker's ACL for the run).
The hub sees the same messages from the same device ids; what the bridge adds is one
broker hop for those devices' messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hub.broker.managed import find_program, log_file, reload_pid
from hub.broker.mosquittoconf import BrokerFiles, acl_text, render_config
from hub.fleet import pki
from hub.paths import HubPaths
from outpost import files
from outpost.wire import TOPIC_PREFIX
from tests.support import free_port

OPEN_FILES_SPARE = 1_000  # a broker's own files and the hub's links, beside its devices
BRIDGE_CN = "bench-bridge-{n}"


def devices_per_broker(per_worker: int) -> int:
    """How many simulated devices one broker may hold under this process's open-file
    limit (which the brokers inherit), in whole workers' shares; or as
    `OUTPOST_BENCH_DEVICES_PER_BROKER` says (to try the bridges with a small fleet)."""
    if wanted := os.environ.get("OUTPOST_BENCH_DEVICES_PER_BROKER"):
        return max(per_worker, int(wanted) // per_worker * per_worker)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, (hard - OPEN_FILES_SPARE) // per_worker) * per_worker


@dataclass
class OverflowBroker:
    """A bridged Mosquitto: devices connect to `port`."""

    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def start_overflow(
    fleet: HubPaths, fleet_port: int, broker_pid: int, folder: Path, n: int
) -> OverflowBroker:
    """Start overflow broker `n` in `folder`, bridged to the fleet's broker on
    `fleet_port` (Mosquitto `broker_pid`, of the hub data folder `fleet`)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cn = BRIDGE_CN.format(n=n)
    bridge_key, bridge_cert = folder / "bridge.key", folder / "bridge.crt"
    ca_key, ca_cert = pki.load_ca(fleet.ca_key.read_bytes(), fleet.ca_cert.read_bytes())
    key = pki.new_ec_key()
    issued = pki.issue(ca_key, ca_cert, common_name=cn, public_key=key.public_key(), days=2)
    files.replace(bridge_key, pki.key_pem(key), files.PRIVATE)
    files.replace(bridge_cert, issued.pem, files.PUBLIC)
    # The fleet's broker gives the bridge what a device has, for every device: it writes
    # their `up` topics and reads their `down` ones. Mosquitto re-reads its ACL on SIGHUP.
    fleet_files = BrokerFiles.managed(fleet)
    acl = fleet_files.acl
    grant = f"\nuser {cn}\ntopic write {TOPIC_PREFIX}/+/up/#\ntopic read {TOPIC_PREFIX}/+/down/#\n"
    files.replace(acl, acl.read_bytes() + grant.encode(), files.PRIVATE)
    if not await reload_pid(fleet, broker_pid):
        raise RuntimeError(f"the fleet's broker did not reload its ACL: see {log_file(fleet)}")
    # The fleet's CA and server certificate, its own folder for the rest.
    where = dataclasses.replace(
        fleet_files,
        folder=folder,
        acl=folder / "acl",
        log=folder / "mosquitto.log",
        crl=folder / "crl.pem",
    )
    files.replace(where.acl, acl_text().encode(), files.PRIVATE)
    port = free_port()
    conf = render_config(
        where,
        header=f"# overflow broker {n}, bridged to the fleet's broker (benchmark)",
        host="127.0.0.1",
        port=port,
        max_packet_bytes=1 << 20,
        crl=False,
    )
    conf += "\n".join(
        [
            "connection fleet",
            f"address 127.0.0.1:{fleet_port}",
            # MQTT 5 both ways, as the hub and the agents speak it.
            "bridge_protocol_version mqttv50",
            f"bridge_cafile {fleet.ca_cert}",
            f"bridge_certfile {bridge_cert}",
            f"bridge_keyfile {bridge_key}",
            "bridge_tls_version tlsv1.2",
            f"remote_clientid {cn}",
            "cleansession true",
            # Its state topic would be refused by the fleet's ACL.
            "notifications false",
            "start_type automatic",
            "restart_timeout 1 5",
            f"topic {TOPIC_PREFIX}/+/up/# out 1",
            f"topic {TOPIC_PREFIX}/+/down/# in 1",
            "",
        ]
    )
    files.replace(folder / "mosquitto.conf", conf.encode(), files.PRIVATE)
    process = subprocess.Popen(
        [find_program("mosquitto"), "-c", str(folder / "mosquitto.conf")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = OverflowBroker(port, process)
    try:
        await _bridged(broker, where.log, log_file(fleet), cn)
    except BaseException:
        broker.stop()
        raise
    return broker


async def _bridged(broker: OverflowBroker, log: Path, fleet_log: Path, cn: str) -> None:
    """Return once the broker listens and the fleet's broker has its bridge connected."""
    connected = f" as {cn} (".encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if broker.process.poll() is not None:
            raise RuntimeError(f"the overflow broker exited: see {log}")
        listening = False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", broker.port), 1):
            listening = True
        # The fleet's broker logs each client it accepts, by its CN.
        if listening and connected in fleet_log.read_bytes():
            return
        await asyncio.sleep(0.05)  # poll: neither says so otherwise
    raise RuntimeError(f"the overflow broker's bridge did not connect in 30 s: see {log}")
