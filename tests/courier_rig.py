"""A hub's courier desk in the test's process (its data folder, its real SQLite store),
devices enrolled straight from its CA, and device bundles made as an agent makes them:
for checks of the hub's import that need a certificate, a clock or a record an agent
would not make."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hub.cli import load_config
from hub.config import HubConfig
from hub.courier.desk import CourierDesk, open_desk
from hub.courier.keys import load_bundle_key
from hub.fleet import pki
from hub.paths import HubPaths
from hub.store import Device, HubStore
from outpost import __version__, tls, wire
from outpost.courier import content, sealing
from outpost.courier.sealing import Header
from outpost.wire.up import Stream
from tests.bench.common import make_hub

DAY = 86400.0


@dataclass
class Rig:
    paths: HubPaths
    config: HubConfig
    store: HubStore
    desk: CourierDesk
    ca_key: pki.CaKey
    ca_cert: x509.Certificate
    fleet: str
    hub_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Site:
    """A device as the hub knows it: its key and the certificate it enrolled with."""

    device_id: str
    key: ec.EllipticCurvePrivateKey
    cert: bytes


@contextmanager
def rig(root: Path, settings: str = "") -> Iterator[Rig]:
    """A hub data folder under `root` (with `settings` added to its hub.toml), its
    store and courier desk; the store is closed at the end."""
    paths, _ = make_hub(root / "hub")
    if settings:
        paths.config.write_text(paths.config.read_text() + settings)
    config = load_config(paths.root)
    store = HubStore(config.database(paths.database))
    try:
        yield attach(paths, config, store)
    finally:
        store.close()


def attach(paths: HubPaths, config: HubConfig, store: HubStore) -> Rig:
    """A rig on a hub's data folder and store (a running hub's, say)."""
    ca_key, ca_cert = pki.load_ca(paths.ca_key.read_bytes(), paths.ca_cert.read_bytes())
    return Rig(
        paths,
        config,
        store,
        open_desk(paths, store, config),
        ca_key,
        ca_cert,
        tls.fingerprint(paths.ca_cert.read_bytes()),
        load_bundle_key(paths).public_key(),
    )


async def enroll(r: Rig, device_id: str, *, days: float = 30, now: float | None = None) -> Site:
    """Enroll `device_id` as enrollment does: a certificate from the CA, recorded."""
    key = pki.new_ec_key()
    issued = pki.issue(
        r.ca_key, r.ca_cert, common_name=device_id, public_key=key.public_key(), days=days
    )
    await r.store.add_device(
        Device(
            device_id=device_id,
            profile="generic",
            labels={},
            online=False,
            last_seen=None,
            last_heartbeat=None,
            heartbeat_interval=None,
            agent_version=None,
            capabilities={},
            load={},
            enrolled_at=time.time() if now is None else now,
            cert_serial=f"{issued.serial:x}",
            cert_not_before=issued.not_before.timestamp(),
            cert_not_after=issued.not_after.timestamp(),
        )
    )
    return Site(device_id, key, issued.pem)


def records(
    stream: Stream, seqs: list[int], *, ts: float | None = None, bodies: list[bytes] | None = None
) -> wire.Records:
    at = time.time() if ts is None else ts
    bodies = bodies or [msgspec.msgpack.encode({"kind": "x", "n": s}) for s in seqs]
    return wire.Records(
        stream=stream,
        from_seq=seqs[0],
        to_seq=seqs[-1],
        seqs=seqs,
        ts=[at] * len(seqs),
        bodies=bodies,
    )


def bundle(
    r: Rig,
    site: Site,
    batches: list[wire.Records],
    *,
    created_at: float | None = None,
    cert: bytes | None = None,
    **extra: Any,
) -> bytes:
    """A device bundle of `batches`, made by `site` (signed with its key, carrying its
    certificate or `cert`)."""
    carried = content.DeviceContent(
        batches=batches,
        aligned=[b.stream for b in batches],
        store_id="store-1",
        agent_version=__version__,
        **extra,
    )
    header = Header(
        v=sealing.VERSION,
        kind=content.KIND_DEVICE,
        fleet=r.fleet,
        sender=site.device_id,
        to=content.HUB,
        id=os.urandom(16).hex(),
        created_at=time.time() if created_at is None else created_at,
    )
    return sealing.seal(
        header,
        content.encode(carried),
        signer=site.key,
        recipient=r.hub_key,
        cert=site.cert if cert is None else cert,
    )


def task_result(task_id: str, attempt: int) -> bytes:
    """A task's result record, as the agent writes it to its results stream."""
    return msgspec.msgpack.encode(
        {
            "kind": "task",
            "task_id": task_id,
            "attempt": attempt,
            "status": "succeeded",
            "label": "x",
            "confidence": 1.0,
        }
    )
