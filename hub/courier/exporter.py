"""Bundles from the hub for devices: per device, the mark of every stream (what the hub
holds, as it answers a hello over MQTT) and the signed policy it should run, signed by
the hub's key and encrypted to the device's public key (learned at enrollment, or from
its first bundle)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hub.models.releases import ModelShelf
from hub.models.rollouts import sealed_offer
from hub.store import HubStore, courierleases
from hub.store import courier as registry
from hub.store.leases import Assigned
from hub.store.offers import Offer
from hub.tasks import allocation
from outpost import policy, release, wire
from outpost.courier import MAX_HUB_BUNDLE_BYTES, content, sealing
from outpost.courier.sealing import BundleError, Header
from outpost.signing import Signed

DEFAULT_LEASE_S = 7 * 86400.0  # the courier's round trip, unless told
DEFAULT_MAX_TASKS = 100  # per device and bundle


@dataclass(frozen=True)
class Exported:
    device_id: str
    sealed: bytes  # b"" when it could not be made
    reason: str = ""  # why not
    tasks: int = 0  # tasks leased to the device in it


class HubBundles:
    def __init__(
        self,
        store: HubStore,
        *,
        signing_key: ed25519.Ed25519PrivateKey,
        fleet: str,
        shelf: ModelShelf,
    ) -> None:
        self._store = store
        self._key = signing_key
        self._fleet = fleet
        self._shelf = shelf

    async def bundle_for(
        self,
        device_id: str,
        *,
        now: float | None = None,
        certificate: bytes = b"",
        note: str = "",
        lease_s: float = DEFAULT_LEASE_S,
        max_tasks: int = DEFAULT_MAX_TASKS,
        gaps: tuple[str, ...] = (),
    ) -> Exported:
        """The sealed bundle for one device; `BundleError` if it cannot be made."""
        now = time.time() if now is None else now
        device = await self._store.device(device_id)
        if device is None:
            raise BundleError(f"{device_id} is not enrolled at this hub")
        if device.revoked_at is not None:
            raise BundleError(f"{device_id} was revoked: no bundle is made for it")
        pem = await self._store.run(registry.device_key, device_id)
        if pem is None:
            raise BundleError(
                f"{device_id} was enrolled before bundles existed, so the hub lacks its key: "
                "import one bundle of it first"
            )
        pending = renewed_pending(pem)
        if pending is None:
            recipient = sealing.load_public_pem(pem.encode(), f"the key of {device_id}")
        else:
            recipient = _ec_key(pending, device_id)
            if not certificate and _current(pending, device.cert_serial, now):
                # Renewed by bundle, not yet presented by the device: its ack may have
                # been lost on the way; this bundle carries it again.
                certificate = pem.encode()
        marks = await self._store.stream_marks([device_id])
        acks = [
            wire.Ack(stream, marks.get((device_id, stream), 0), gap=stream in gaps)
            for stream in wire.STREAMS
        ]
        # Everything that may refuse the bundle comes before the tasks are leased, and a
        # seal that fails gives them back: leased in a bundle never made, nobody could
        # deliver them until the lease lapsed, days on.
        releases, files = await self._releases(device_id, device.models)
        signed_policy = await self._policy(device_id, now)
        numbered_by = await self._store.run(registry.numbering, device_id)
        leased = await self._lease(device_id, now, lease_s, max_tasks)
        tasks = [a.message(now) for a in leased]
        carried = content.HubContent(
            acks=acks,
            policy=signed_policy,
            numbered_by=numbered_by,
            certificate=certificate.decode(),
            note=note,
            tasks=tasks,
            lease_s=lease_s,
            releases=releases,
            model_files=files,
        )
        header = Header(
            v=sealing.VERSION,
            kind=content.KIND_HUB,
            fleet=self._fleet,
            sender=content.HUB,
            to=device_id,
            id=secrets.token_hex(16),
            created_at=now,
        )
        try:
            sealed = await asyncio.to_thread(
                sealing.seal, header, content.encode(carried), signer=self._key, recipient=recipient
            )
            if len(sealed) > MAX_HUB_BUNDLE_BYTES:  # the device would refuse all of it
                raise BundleError(
                    f"the bundle for {device_id} would be {len(sealed):,} bytes, over the "
                    f"{MAX_HUB_BUNDLE_BYTES:,} a device imports: its model files make it "
                    "so (roll out fewer or smaller models to it by bundle)"
                )
        except BundleError as exc:
            if leased:
                why = f"the courier bundle carrying it was not made: {exc}"
                await self._store.run(courierleases.give_back, leased, time.time(), why)
            raise
        return Exported(device_id, sealed, tasks=len(tasks))

    async def export(
        self,
        device_ids: list[str],
        *,
        now: float | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        max_tasks: int = DEFAULT_MAX_TASKS,
        lease_to: Collection[str] | None = None,
    ) -> list[Exported]:
        """A bundle for each device; only those in `lease_to` (None: all) lease tasks."""
        out = []
        for device_id in device_ids:
            limit = max_tasks if lease_to is None or device_id in lease_to else 0
            try:
                out.append(
                    await self.bundle_for(device_id, now=now, lease_s=lease_s, max_tasks=limit)
                )
            except BundleError as exc:
                out.append(Exported(device_id, b"", str(exc)))
        return out

    async def _lease(
        self, device_id: str, now: float, lease_s: float, limit: int
    ) -> list[Assigned]:
        return await self._store.run(
            courierleases.lease, device_id, now, lease_s, limit, allocation.matches
        )

    async def _releases(
        self, device_id: str, has: list[dict[str, Any]]
    ) -> tuple[wire.ModelReleases | None, list[content.ModelFile]]:
        """The releases the device should run (as the roll-outs would send them), and
        the file of each it does not report holding (by name, version and sha256)."""
        now = time.time()
        offer = (await self._store.offers_of([device_id], now=now))[device_id]
        desired = offer.releases
        if not desired:
            return None, []
        held = {(m.get("name"), m.get("version"), m.get("sha256")) for m in has}
        files = []
        for document, signature in desired:
            m = release.verify(self._key.public_key(), Signed(document, signature)).manifest
            if (m.name, m.version, m.sha256) in held:
                continue
            path = await self._shelf.local_file(m.name, m.version)
            if path is None:
                raise BundleError(f"model {m.name} {m.version} has no file on this hub")
            data = await asyncio.to_thread(path.read_bytes)
            files.append(content.ModelFile(m.name, m.version, m.sha256, data))
        # No shadows: their files do not travel, and a site without a link has nowhere
        # to download them from.
        return sealed_offer(self._key, Offer(device_id, offer.seq, desired, []), now), files

    async def _policy(self, device_id: str, now: float) -> wire.SignedPolicy | None:
        # The current effective policy, given its version first if it changed.
        await self._store.refresh_policies([device_id], now=now)
        effective = await self._store.device_policy(device_id)
        if effective is None or not effective.version or effective.undeliverable:
            return None
        signed = policy.sign(self._key, device_id, effective.version, now, effective.document)
        return wire.SignedPolicy(document=signed.document, signature=signed.signature)


def renewed_pending(pem: str | None) -> x509.Certificate | None:
    """The certificate renewed by bundle that the device has not presented yet, if the
    registry's key for it is one (hub/store/courier.py `keep_renewed`)."""
    if pem is None or "CERTIFICATE" not in pem:
        return None
    return x509.load_pem_x509_certificate(pem.encode())


def _current(cert: x509.Certificate, newest_serial: str | None, now: float) -> bool:
    """Still the device's newest certificate (not superseded by a renewal over HTTPS)
    and not expired."""
    return (
        format(cert.serial_number, "x") == newest_serial
        and cert.not_valid_after_utc.timestamp() > now
    )


def _ec_key(cert: x509.Certificate, device_id: str) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise BundleError(f"the certificate kept for {device_id} does not hold an EC key")
    return key
