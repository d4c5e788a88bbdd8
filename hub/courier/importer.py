"""Import a device's courier bundle: decrypt it with the hub's bundle key, check who made
it (a certificate of this fleet's CA that the hub issued to an enrolled, unrevoked
device, not expired past the renewal grace period, whose key signed it: signer.py), for
whom, when, and that it was not imported before; then store its records
exactly as MQTT uploads are stored (`apply_uploads`: the same high-water-mark dedupe, the
same task-result rules), note the device as heard of, and answer with a bundle for the
device: its marks and its policy (exporter.py).

Every refusal is a `BundleError` whose message says why, and stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hub.courier.exporter import DEFAULT_LEASE_S, DEFAULT_MAX_TASKS, HubBundles, renewed_pending
from hub.courier.signer import SignerCheck, ec_key
from hub.fleet.certificates import RenewalRefusedError, Renewals
from hub.store import HubStore, Upload, courierleases
from hub.store import courier as registry
from hub.store.modelstats import Folded
from outpost.courier import content, sealing
from outpost.courier.sealing import BundleError

logger = logging.getLogger(__name__)

MAX_AGE_S = 365 * 86400.0  # a bundle older than this is refused as stale
FUTURE_SLACK_S = 3600.0  # a device clock this far ahead is tolerated
BATCHES_PER_TRANSACTION = 100  # of up to 1,000 records: one durable commit each


@dataclass(frozen=True)
class Tally:
    """The running hub's counts of what uploads stored (its /metrics): an import adds to
    them as the MQTT ingest does, so a site served by courier counts alike."""

    stored: Counter[str]  # new records, by stream
    task_results: Counter[str]  # by outcome
    rollups: Callable[[Folded], None]  # what newly stored metric roll-ups add


@dataclass
class ImportOutcome:
    """What one bundle brought."""

    device_id: str
    bundle_id: str
    created_at: float
    stored: Counter[str] = field(default_factory=Counter)  # new records, by stream
    repeated: int = 0  # records the hub held already (sent over MQTT, or an earlier bundle)
    waiting: list[str] = field(default_factory=list)  # streams not taken: numbered unaligned
    gaps: list[str] = field(default_factory=list)  # streams whose records start past the mark
    task_results: Counter[str] = field(default_factory=Counter)
    ack: bytes = b""  # the sealed bundle for the device
    renewed: bool = False  # its certificate was renewed: the ack carries the new one
    tasks_leased: int = 0  # tasks the ack leases to the device
    ack_problem: str = ""  # why there is no ack (the records are stored all the same)
    history: str = ""  # what the device went through since the last ack, in a line
    renewal_waits: bool = False  # a renewal request not answered: no ack was asked for
    outdated: bool = False  # made before the hub last heard of the device: registry untouched

    def summary(self) -> str:
        stored = sum(self.stored.values())
        parts = [f"{self.device_id}: {stored:,} new records"]
        if self.repeated:
            parts.append(f"{self.repeated:,} already held")
        if self.task_results:
            parts.append("tasks " + ", ".join(f"{k} {v}" for k, v in self.task_results.items()))
        if self.gaps:
            parts.append(
                ", ".join(self.gaps) + " not taken: they start past what the hub holds (its "
                "ack tells the device to send from there)"
            )
        if self.renewed:
            parts.append("certificate renewed (in the ack bundle)")
        if self.renewal_waits:
            parts.append(
                "its certificate renewal request waits: no ack written (--ack-out), so no "
                "certificate was issued (the device asks again in its next bundle)"
            )
        if self.tasks_leased:
            parts.append(f"{self.tasks_leased} tasks leased to it in the ack bundle")
        if self.waiting:
            parts.append(
                ", ".join(self.waiting) + " not taken: numbered before the device knew the "
                "hub's marks (the device sends them again after the ack bundle, renumbered "
                "if need be)"
            )
        if self.outdated:
            parts.append(
                "made before the hub last heard of the device: what it says the device runs "
                "and any renewal request are out of date, and left alone"
            )
        if self.history:
            parts.append(self.history)
        return "; ".join(parts)


class BundleImporter:
    def __init__(
        self,
        store: HubStore,
        *,
        bundle_key: ec.EllipticCurvePrivateKey,
        signer: SignerCheck,
        fleet: str,
        exporter: HubBundles,
        renewals: Renewals,
        max_attempts: int,
        tally: Tally | None = None,
    ) -> None:
        self._renewals = renewals
        self._store = store
        self._key = bundle_key
        self._signer = signer
        self._fleet = fleet
        self._exporter = exporter
        self._max_attempts = max_attempts  # a task's, as the allocation pass counts them
        self._tally = tally  # None: no running hub counts (the command line)

    async def import_bundle(
        self,
        sealed: bytes,
        *,
        now: float | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        max_tasks: int = DEFAULT_MAX_TASKS,
        answer: bool = True,
    ) -> ImportOutcome:
        """Import one device bundle; with `answer`, make its ack, which leases the device
        up to `max_tasks` tasks for `lease_s` (the courier's round trip) and carries its
        renewed certificate. Without, nothing is leased or renewed: leases and a
        certificate only a bundle can deliver would be lost with it (`bundle export`
        makes the bundle later, with the leases; the device asks for its certificate
        again in its next bundle)."""
        now = time.time() if now is None else now
        to = sealing.addressee(sealed)
        if to != content.HUB:
            raise BundleError(
                f"this bundle is for device {to}, not for the hub: import it on that device "
                "(outpost-agent bundle import)"
            )
        # Decrypting, decompressing and decoding a large bundle takes seconds: not on
        # the event loop, which serves the API and the fleet meanwhile.
        opened = await asyncio.to_thread(sealing.unseal, sealed, self._key)
        header = opened.header
        device_id = header.sender
        if header.kind != content.KIND_DEVICE or header.to != content.HUB:
            raise BundleError(f"a {header.kind} bundle for {header.to} is not a device's bundle")
        if header.fleet != self._fleet:
            raise BundleError("this bundle is from another fleet (its CA is not this hub's)")
        cert = self._signer.certificate(opened.cert, device_id)
        await asyncio.to_thread(sealing.verify, opened, ec_key(cert), f"bundle of {device_id}")
        device = await self._store.device(device_id)
        if device is None:
            raise BundleError(f"{device_id} is not enrolled at this hub")
        if device.revoked_at is not None:
            raise BundleError(f"{device_id} was revoked: its bundles are refused")
        await self._signer.check_current(cert, device_id, now)
        if header.created_at > now + FUTURE_SLACK_S:
            raise BundleError(
                f"bundle of {device_id} is dated in the future ({_ago(header.created_at, now)}): "
                "the device's clock is wrong"
            )
        if header.created_at < now - MAX_AGE_S:
            raise BundleError(
                f"bundle of {device_id} is stale: made {_ago(header.created_at, now)}"
            )
        seen = await self._store.run(registry.imported, header.id)
        if seen is not None:
            raise BundleError(
                f"bundle {header.id[:12]} of {device_id} was imported already, "
                f"{_ago(seen.imported_at, now)}: nothing stored again"
            )
        try:
            carried = await asyncio.to_thread(content.decode_device, opened.body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise BundleError(f"bundle of {device_id}: its content is malformed: {exc}") from exc
        outcome = ImportOutcome(device_id, header.id, header.created_at)
        if carried.history is not None:
            outcome.history = carried.history.describe()
        # Made before the hub last heard of the device (over MQTT, or by a newer bundle):
        # its records are stored as any (the marks drop what is held), but what it says
        # the device runs, how it does, and its renewal request are out of date.
        outcome.outdated = device.last_seen is not None and header.created_at < device.last_seen
        # What the allocation pass would have done by now, had it run (the hub stopped
        # while the stick travelled): a result after its lease counts as late.
        await self._store.run(courierleases.end_lapsed, device_id, now, self._max_attempts)
        await self._store_records(device_id, carried, outcome, now)
        detail = (
            f"bundle {header.id[:12]} made {_ago(header.created_at, now)}: "
            + (outcome.summary().split(": ", 1)[1])
        )
        first = await self._store.run(
            registry.record_import,
            registry.Imported(
                header.id, device_id, header.created_at, now, sum(outcome.stored.values())
            ),
            carried.agent_version,
            None if outcome.outdated else _inventory(carried),
            detail,
        )
        if not first:  # another import of the same bundle won the race: it stored them
            raise BundleError(f"bundle {header.id[:12]} of {device_id} was imported already")
        pending = renewed_pending(await self._store.run(registry.device_key, device_id))
        if pending is None or _supersedes(cert, pending):  # else: still to be delivered
            await self._store.run(registry.remember_key, device_id, _public_pem(cert))
        serving = [(m.name, m.version) for m in carried.models if m.state == "ready"]
        if serving and not outcome.outdated:  # a roll-out that waited on its word moves on
            await self._store.reconcile_inventory([(device_id, serving)], now=now)
        if not answer:
            if carried.renewal_csr and not outcome.outdated:
                outcome.renewal_waits = True
            logger.info("imported %s", detail)
            return outcome
        renewed, note = b"", ""
        if carried.renewal_csr and not outcome.outdated:
            try:
                renewed = (
                    await self._renewals.renew(
                        certificate_pem=opened.cert,
                        csr_pem=carried.renewal_csr.encode(),
                        now=now,
                    )
                ).certificate_pem
                outcome.renewed = True
                await self._store.run(registry.keep_renewed, device_id, renewed.decode())
            except RenewalRefusedError as exc:
                note = f"certificate renewal refused: {exc}"
                logger.warning("bundle of %s: %s", device_id, note)
        try:
            made = await self._exporter.bundle_for(
                device_id,
                now=now,
                certificate=renewed,
                note=note,
                lease_s=lease_s,
                max_tasks=max_tasks,
                gaps=tuple(outcome.gaps),
            )
        except BundleError as exc:  # the records are stored: say why there is no ack
            outcome.ack_problem = (
                f"no ack bundle: {exc}; once fixed, `outpost-hub bundle export --device "
                f"{device_id}` writes one"
            )
            logger.warning("bundle of %s: %s", device_id, outcome.ack_problem)
        else:
            outcome.ack, outcome.tasks_leased = made.sealed, made.tasks
        logger.info("imported %s", detail)
        return outcome

    async def _store_records(
        self, device_id: str, carried: content.DeviceContent, outcome: ImportOutcome, now: float
    ) -> None:
        marks = await self._store.stream_marks([device_id])
        numbered = await self._store.run(registry.numbering, device_id)
        usable = []
        for batch in carried.batches:
            stream = batch.stream
            if stream not in carried.aligned and numbered.get(stream) != carried.store_id:
                # A store not yet told the hub's marks numbers from 1: its records are
                # the hub's next ones only if the hub holds none of that stream yet (it
                # then takes this store's numbering, and says so in its bundle back).
                if marks.get((device_id, stream), 0):
                    if stream not in outcome.waiting:
                        outcome.waiting.append(stream)
                    continue
                await self._store.run(registry.adopt_numbering, device_id, stream, carried.store_id)
                numbered[stream] = carried.store_id
            usable.append(batch)
        for first in range(0, len(usable), BATCHES_PER_TRANSACTION):
            chunk = usable[first : first + BATCHES_PER_TRANSACTION]
            applied = await self._store.apply_uploads(
                [Upload.of(device_id, b) for b in chunk], now=now
            )
            outcome.task_results.update(applied.task_results)
            stored: Counter[str] = Counter()
            for batch, result in zip(chunk, applied.applied, strict=True):
                if result.gap:  # the hub lacks numbers before it: the device sends again
                    if batch.stream not in outcome.gaps:
                        outcome.gaps.append(batch.stream)
                    continue
                stored[batch.stream] += result.stored
                outcome.repeated += len(batch.seqs) - result.stored
            outcome.stored.update(stored)
            if self._tally is not None:  # as each commit goes in, as the ingest counts
                self._tally.stored.update(stored)
                self._tally.task_results.update(applied.task_results)
                if applied.rollups.rollups:
                    self._tally.rollups(applied.rollups)


def _inventory(carried: content.DeviceContent) -> registry.Inventory:
    """What the bundle says the device runs and how it is doing, as the registry keeps a
    hello's and a heartbeat's."""
    beat = carried.heartbeat
    policy = None
    if beat is not None and beat.policy is not None:
        policy = (beat.policy.version, beat.policy.rejected_version, beat.policy.reason)
    return registry.Inventory(
        models_json=_json(carried.models),
        task_slots=carried.task_slots,
        load_json=_json(beat.load) if beat is not None else None,
        store_json=_json(beat.store) if beat is not None and beat.store is not None else None,
        policy=policy,
    )


def _json(value: object) -> str:
    return json.dumps(msgspec.to_builtins(value), sort_keys=True)


def _supersedes(presented: x509.Certificate, pending: x509.Certificate) -> bool:
    """The device presents the renewed certificate (it has it), or a newer one (renewed
    over HTTPS since)."""
    return (
        presented.serial_number == pending.serial_number
        or presented.not_valid_before_utc > pending.not_valid_before_utc
    )


def _public_pem(cert: x509.Certificate) -> str:
    return sealing.public_pem(ec_key(cert)).decode()


def _ago(at: float, now: float) -> str:
    seconds = now - at
    if seconds < 0:
        return f"{-seconds / 3600:.1f} h ahead"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"
