"""The agent's end of courier bundles (outpost/courier), run inside the daemon so that
its store is never opened twice: the local API serves `POST /v1/bundles/export` and
`POST /v1/bundles/import`, which `outpost-agent bundle` calls.

Export: every record the hub has not acknowledged, as the upload batches the uploader
would send, and what a heartbeat would say; signed with the device key (its certificate
travels along) and encrypted to the hub's bundle key. Exporting again before an ack
exports the same records again. Import: the hub's marks go through the uploader's
`on_ack` and the policy through the policy keeper's `receive`, exactly as from MQTT.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from edge import couriercerts
from edge.identity import DevicePaths
from edge.parts import AgentParts
from edge.store import StoreReadError
from outpost import __version__, files, release, signing, tls, wire
from outpost.courier import content, history, sealing, utc
from outpost.courier.sealing import BundleError, Header
from outpost.modelbundle import Manifest
from outpost.signing import Signed

logger = logging.getLogger(__name__)

BATCH_BYTES = 4 << 20  # per upload batch in a bundle (of at most 1,000 records)
KEEP_IDS = 1000  # hub bundles remembered as imported
MAX_RECORDS = 100_000  # per bundle, by default: ~100 MiB at its peak while made


@dataclass(frozen=True)
class Keys:
    device: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    hub_signing: ed25519.Ed25519PublicKey
    hub_bundle: ec.EllipticCurvePublicKey | None  # None: enrolled before bundles existed
    fleet: str

    @classmethod
    def load(cls, paths: DevicePaths) -> Keys:
        device = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
        if not isinstance(device, ec.EllipticCurvePrivateKey):
            raise BundleError("the device key is not an EC key: bundles need one")
        try:
            hub_signing = signing.load_public_pem(
                paths.hub_signing_pub.read_bytes(), "the hub's signing key"
            )
        except ValueError as exc:
            raise BundleError(str(exc)) from exc
        bundle = None
        if paths.hub_bundle_pub.exists():
            bundle = sealing.load_public_pem(paths.hub_bundle_pub.read_bytes(), "the hub's key")
        return cls(
            device,
            paths.cert.read_bytes(),
            hub_signing,
            bundle,
            tls.fingerprint(paths.ca_cert.read_bytes()),
        )


class CourierDesk:
    def __init__(
        self,
        paths: DevicePaths,
        device_id: str,
        parts: AgentParts,
        task_slots: int = 0,
    ) -> None:
        self._task_slots = task_slots
        # What a heartbeat would say (edge/telemetry.py), once the agent has made it.
        self.heartbeat: Callable[[str], Awaitable[wire.Heartbeat]] | None = None
        self._paths = paths
        self._device_id = device_id
        self._parts = parts
        self._lock = asyncio.Lock()  # one export or import at a time

    async def export(self, max_records: int = MAX_RECORDS) -> tuple[bytes, dict[str, int], bool]:
        """The sealed bundle for the hub, its records by stream, and whether records were
        left out (over `max_records`: the device holds the bundle in memory while making
        it, ~1 KiB a record; the next bundle, after this one's ack, carries them)."""
        async with self._lock:
            keys = await asyncio.to_thread(Keys.load, self._paths)
            if keys.hub_bundle is None:
                raise BundleError(
                    "this device was enrolled before courier bundles existed, so it lacks "
                    f"the hub's bundle key: copy the hub's pki/bundle.pub to "
                    f"{self._paths.hub_bundle_pub}"
                )
            batches, counts, more = await self._unacknowledged(max_records)
            csr = await asyncio.to_thread(
                couriercerts.renewal_csr, self._paths, keys.device, self._device_id
            )
            beat = None
            if self.heartbeat is not None:
                try:
                    beat = await self.heartbeat("courier")
                except (OSError, StoreReadError) as exc:  # the records matter more
                    logger.warning("bundle without a heartbeat: %s", exc)
            carried = content.DeviceContent(
                batches=batches,
                aligned=sorted(await self._parts.store.aligned()),
                store_id=await self._parts.store.store_id(),
                agent_version=__version__,
                renewal_csr=csr,
                models=self._parts.inference.inventory(),
                task_slots=self._task_slots,
                heartbeat=beat,
                history=await asyncio.to_thread(history.summarise, batches),
            )
            header = Header(
                v=sealing.VERSION,
                kind=content.KIND_DEVICE,
                fleet=keys.fleet,
                sender=self._device_id,
                to=content.HUB,
                id=secrets.token_hex(16),
                created_at=time.time(),
            )
            body = await asyncio.to_thread(content.encode, carried)
            sealed = await asyncio.to_thread(
                sealing.seal,
                header,
                body,
                signer=keys.device,
                recipient=keys.hub_bundle,
                cert=keys.cert_pem,
            )
            logger.info(
                "bundle %s exported: %s records", header.id[:12], f"{sum(counts.values()):,}"
            )
            return sealed, counts, more

    async def import_(self, sealed: bytes) -> dict[str, Any]:
        """Apply a hub's bundle for this device; what it did, for the caller to print."""
        async with self._lock:
            keys = await asyncio.to_thread(Keys.load, self._paths)
            to = sealing.addressee(sealed)
            if to != self._device_id:
                raise BundleError(
                    f"this bundle is for {to}, not for this device ({self._device_id})"
                    + (": import it at the hub (outpost-hub bundle import)" if to == "hub" else "")
                )
            opened = await asyncio.to_thread(sealing.unseal, sealed, keys.device)
            header = opened.header
            if header.kind != content.KIND_HUB or header.sender != content.HUB:
                raise BundleError(f"a {header.kind} bundle from {header.sender} is not the hub's")
            if header.fleet != keys.fleet:
                raise BundleError("this bundle is from another fleet's hub")
            sealing.verify(opened, keys.hub_signing, "hub bundle")
            if header.to != self._device_id:  # unseal checks it against the clear one too
                raise BundleError(f"this hub bundle was signed for {header.to}, not this device")
            log = await asyncio.to_thread(self._log)
            if header.id in log.imported:
                raise BundleError(
                    f"hub bundle {header.id[:12]} was imported here already, at "
                    f"{utc(log.imported[header.id])}: nothing applied again"
                )
            try:
                carried = content.decode_hub(opened.body)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                raise BundleError(f"the hub bundle's content is malformed: {exc}") from exc
            # A bundle made before one applied here already (carried out of order) still
            # holds marks (cumulative: a lower one changes nothing) and tasks leased to
            # this device; its releases, gap flags and certificate are out of date, and
            # would roll back what the newer bundle set (offers have no version order).
            older = header.created_at < log.newest_made
            renewed = None
            if carried.certificate and not older:
                # Checked before anything is applied: a refused certificate refuses the
                # bundle whole, not after its marks, policy and tasks went in unlogged.
                renewed = await asyncio.to_thread(
                    couriercerts.check,
                    self._paths,
                    carried.certificate.encode(),
                    keys.device,
                    self._device_id,
                )
            store = self._parts.store
            before = await store.cursors()
            mine = await store.store_id()
            for ack in carried.acks:
                if carried.numbered_by.get(ack.stream) == mine:
                    # The hub numbers this stream as this store does: the mark is in
                    # our own numbers, so align without renumbering past it.
                    await store.adopt_numbering(ack.stream)
                await self._parts.uploader.on_ack(
                    msgspec.structs.replace(ack, gap=False) if older else ack
                )
            after = await store.cursors()
            policy = "none"
            if carried.policy is not None:
                applied = await asyncio.to_thread(self._parts.policy.receive, carried.policy)
                current = self._parts.policy.current
                version = current.version if current else 0
                policy = f"version {version} applied" if applied else f"version {version} kept"
            # Their deadline and lease count from the bundle's making, not from now: the
            # days on the stick are gone at the hub too.
            age = max(0.0, time.time() - header.created_at)
            tasks, overdue = still_due(carried.tasks, age)
            for first in range(0, len(tasks), wire.MAX_TASK_BATCH):
                # As from MQTT: each is checked, kept in the inbox (on disk), then run.
                await self._parts.tasks.assign(
                    wire.Tasks(tasks=tasks[first : first + wire.MAX_TASK_BATCH])
                )
            releases = "none"
            staged: list[content.ModelFile] = []
            refused_files: list[str] = []
            if older and (carried.releases is not None or carried.certificate):
                releases = "left alone: the bundle is older than one applied here already"
            elif carried.releases is not None:
                staged, refused_files = await asyncio.to_thread(
                    _matching_files, carried.releases, carried.model_files, keys.hub_signing
                )
                for carried_file in staged:
                    await self._parts.deployer.stage(
                        carried_file.name,
                        carried_file.version,
                        carried_file.sha256,
                        carried_file.data,
                    )
                for problem in refused_files:
                    logger.warning("hub bundle %s: %s", header.id[:12], problem)
                await self._parts.deployer.offer(carried.releases)  # deployed in turn
                releases = f"{len(carried.releases.releases)} offered"
            certificate = "none"
            if renewed is not None:
                certificate = await asyncio.to_thread(
                    couriercerts.install, self._paths, carried.certificate.encode(), renewed
                )
            if carried.note:
                logger.warning("the hub's bundle says: %s", carried.note)
            log.imported[header.id] = time.time()
            if not older:
                log.newest_made = header.created_at
                for ack in carried.acks:
                    if ack.gap:
                        log.resend_from[ack.stream] = ack.hwm
                    else:
                        log.resend_from.pop(ack.stream, None)
            await asyncio.to_thread(self._keep_log, log)
            forgotten = {s: after[s][0] - before[s][0] for s in after if after[s][0] > before[s][0]}
            logger.info("hub bundle %s imported (made %s)", header.id[:12], utc(header.created_at))
            return {
                "bundle": header.id,
                "made_at": header.created_at,
                "acknowledged": {a.stream: a.hwm for a in carried.acks},
                "forgotten_through": forgotten,
                "policy": policy,
                "releases": releases,
                "older": older,
                "certificate": certificate,
                "note": carried.note,
                "tasks": len(tasks),
                "tasks_overdue": overdue,
                "models": [f"{f.name} {f.version}" for f in staged],
                "models_refused": refused_files,
                "lease_s": max(0.0, carried.lease_s - age),  # what is left of it
            }

    async def _unacknowledged(
        self, max_records: int
    ) -> tuple[list[wire.Records], dict[str, int], bool]:
        """Upload batches of what the hub has not acknowledged, oldest first per stream,
        up to about `max_records` in all; and whether any were left out."""
        store = self._parts.store
        cursors = await store.cursors()
        resend_from = (await asyncio.to_thread(self._log)).resend_from
        batches: list[wire.Records] = []
        counts: dict[str, int] = {}
        more = False
        for stream in wire.STREAMS:
            after = cursors.get(stream, (0, 0))[0]
            # After a gap, the first batch covers from the hub's mark: the numbers
            # between are gone from here, and the batch says so (as over MQTT).
            covered_from = min(after, resend_from.get(stream, after))
            counts[stream] = 0
            while True:
                room = max_records - sum(counts.values())
                rows = await store.batch_packed(
                    stream,
                    after,
                    max_records=max(1, min(wire.MAX_BATCH_RECORDS, room)),
                    max_bytes=BATCH_BYTES,
                )
                if not rows:
                    break
                if room <= 0:
                    more = True
                    break
                last = rows[-1][0]
                batches.append(
                    wire.Records(
                        stream=stream,
                        from_seq=covered_from + 1,
                        to_seq=last,
                        seqs=[r[0] for r in rows],
                        ts=[r[1] for r in rows],
                        bodies=[r[2] for r in rows],
                    )
                )
                counts[stream] += len(rows)
                after = covered_from = last
        return batches, counts, more

    def _log(self) -> CourierLog:
        try:
            loaded = json.loads(self._paths.courier_log.read_text())
            return msgspec.convert(loaded, CourierLog)
        except FileNotFoundError:
            return CourierLog()
        except (OSError, ValueError, msgspec.ValidationError) as exc:
            logger.warning("%s unreadable (%s): starting it again", self._paths.courier_log, exc)
            return CourierLog()

    def _keep_log(self, log: CourierLog) -> None:
        newest = dict(sorted(log.imported.items(), key=lambda kv: kv[1])[-KEEP_IDS:])
        kept = CourierLog(imported=newest, resend_from=log.resend_from, newest_made=log.newest_made)
        files.replace(self._paths.courier_log, msgspec.json.encode(kept), files.PRIVATE)


class CourierLog(msgspec.Struct):
    """What the courier desk keeps between bundles (courier.json in the data folder)."""

    imported: dict[str, float] = {}  # hub bundles applied here, by id: a replay is refused
    # Streams the hub refused as a gap (it holds less than this device was told: a hub
    # restored from a backup), from the mark it holds: the next export starts there, as
    # the uploader does over MQTT.
    resend_from: dict[str, int] = {}
    # When the newest hub bundle applied here was made: an older one carried in after it
    # changes no releases, gap flags or certificate.
    newest_made: float = 0.0


def still_due(tasks: list[wire.Assignment], age: float) -> tuple[list[wire.Assignment], int]:
    """The tasks of a hub bundle made `age` seconds ago with their deadline and lease
    shortened by that (the hub counts both from the bundle's making), and how many ran
    out meanwhile (left out: the hub puts them back in its queue). A bundle dated ahead
    of this device's clock counts as made now."""
    age = max(0.0, age)
    due = [
        msgspec.structs.replace(t, deadline_in_s=t.deadline_in_s - age, lease_s=t.lease_s - age)
        for t in tasks
        if t.deadline_in_s > age and t.lease_s > age
    ]
    return due, len(tasks) - len(due)


def _matching_files(
    releases: wire.ModelReleases,
    carried: list[content.ModelFile],
    hub_key: ed25519.Ed25519PublicKey,
) -> tuple[list[content.ModelFile], list[str]]:
    """The carried model files that are the ones their signed releases name (size and
    sha256, as a download is checked), and why each other one is refused. A refused
    file is never staged: the deployer then fetches the release as over a link."""
    manifests: dict[tuple[str, str], Manifest] = {}
    for signed in releases.releases:
        try:
            m = release.verify(hub_key, Signed(signed.document, signed.signature)).manifest
        except release.ReleaseError:
            continue  # the deployer refuses and reports it
        manifests[m.name, m.version] = m
    good, refused = [], []
    for carried_file in carried:
        found = manifests.get((carried_file.name, carried_file.version))
        what = f"model {carried_file.name} {carried_file.version}"
        if found is None:
            refused.append(f"{what}: its file is carried without a signed release naming it")
        elif (
            len(carried_file.data) != found.size
            or hashlib.sha256(carried_file.data).hexdigest() != found.sha256
        ):
            refused.append(
                f"{what}: its file does not match the signed release (size, sha256): not installed"
            )
        else:
            good.append(carried_file)
    return good, refused
