"""Device revocation: the registry marks the device, a CRL signed by the fleet CA lists
every certificate it was ever issued, the broker re-reads the CRL, and the device's open
connection is taken over and closed.

Mosquitto checks the CRL only when a client connects (a SIGHUP reloads it but keeps open
connections), so the hub also takes the device's session over (hub/sessions.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hub import pki, revocation_proof, sessions
from hub.broker import BrokerSupervisor, crl_file, reload_running
from hub.config import HubConfig
from hub.paths import HubPaths
from hub.store import HubStore, RevokedCert
from outpost import datalock, files

logger = logging.getLogger(__name__)


class UnknownDeviceError(LookupError):
    """There is no such device in the registry."""


@dataclass(frozen=True)
class Revocation:
    """What revoking a device did."""

    device_id: str
    revoked_at: float
    certificates: int  # of this device, now listed in the CRL
    broker_reloaded: bool  # False: no managed broker runs (or it did not confirm)
    disconnected: bool  # the session takeover went through (whether or not it was online)
    already_revoked: bool = False  # it was before this call (the steps were redone)
    # None: the broker refused a revoked certificate of this device as revoked (proven);
    # else why the proof failed. Only tried when the broker reloaded.
    proof_failure: str | None = None


def build_crl(
    ca_key: pki.CaKey,
    ca_cert: x509.Certificate,
    revoked: Sequence[RevokedCert],
    *,
    now: float,
) -> bytes:
    """Return a PEM CRL signed by the fleet CA listing `revoked` (and held).

    Its next update is the CA's own expiry: OpenSSL refuses every client while the CRL it
    holds is out of date, and the hub rewrites the list at each revocation and each start
    rather than on a schedule.
    """
    this_update = dt.datetime.fromtimestamp(now, dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update - dt.timedelta(minutes=1))  # tolerate a little skew
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(int(now * 1000)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for entry in revoked:
        line = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(entry.serial, 16))
            .revocation_date(dt.datetime.fromtimestamp(entry.revoked_at, dt.UTC))
        )
        if entry.held:  # a suspension that ends (hub/holds.py); OpenSSL refuses it alike
            line = line.add_extension(
                x509.CRLReason(x509.ReasonFlags.certificate_hold), critical=False
            )
        builder = builder.add_revoked_certificate(line.build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def write_crl(paths: HubPaths, store: HubStore) -> int:
    """Write the CRL from the registry (revoked devices, and those held off now) into the
    broker folder; return the serials listed."""
    return await asyncio.to_thread(_write_crl, paths, store)


def _write_crl(paths: HubPaths, store: HubStore) -> int:
    """Read, build and write under a file lock: a `device revoke` command and the hub may
    both write, and the one that writes last must hold what the other just revoked."""
    ca_key, ca_cert = pki.load_ca(paths.ca_key.read_bytes(), paths.ca_cert.read_bytes())
    paths.broker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(paths.broker_dir / ".crl.lock"):
        now = time.time()
        revoked = store.revoked_certs_sync() + store.held_certs_sync(now)
        pem = build_crl(ca_key, ca_cert, revoked, now=now)
        # Mosquitto may run as another user than the hub; the CRL is no secret.
        files.replace(crl_file(paths), pem, files.PUBLIC)
    return len(revoked)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def prepare(paths: HubPaths, config: HubConfig, store: HubStore) -> None:
    """Write the CRL before the broker starts (Mosquitto will not start without it)."""
    listed = await write_crl(paths, store)
    if not config.managed_broker:
        logger.warning(
            "external broker: configure it to check the CRL %s (%d revoked certificates) "
            "and reload it after each `outpost-hub device revoke`; the hub cannot",
            crl_file(paths),
            listed,
        )


class Revoker:
    """Revokes devices, from the hub (API) or from a command beside it (CLI)."""

    def __init__(
        self,
        paths: HubPaths,
        config: HubConfig,
        store: HubStore,
        *,
        broker: BrokerSupervisor | None = None,
    ) -> None:
        self._paths = paths
        self._config = config
        self._store = store
        self._broker = broker  # None: find a running hub's broker by its pid file

    async def revoke(self, device_id: str, *, by: str, now: float | None = None) -> Revocation:
        """Revoke `device_id` on behalf of `by` (a token's subject, or `cli:<OS user>`),
        again if it already is: each step is idempotent and a second call finishes what a
        failed one left; raise `UnknownDeviceError`."""
        now = time.time() if now is None else now
        device = await self._store.revoke_device(device_id, now=now, by=by)
        if device is None or device.revoked_at is None:
            raise UnknownDeviceError(f"no device {device_id!r}")
        certificates = await self._store.device_certs(device_id)
        probe = None
        if self._config.managed_broker and await self._hub_running():
            # Listed in the CRL written next, with the device's other certificates.
            probe = await revocation_proof.issue_probe(self._paths, self._store, device_id)
        listed = await write_crl(self._paths, self._store)
        logger.warning(
            "revoked %s: %d of its certificates in the CRL (%d in all)",
            device_id,
            len(certificates),
            listed,
        )
        reloaded = await self._reload()
        # After the reload: the device cannot reconnect once its session is gone.
        disconnected = await sessions.take_over(self._paths, self._config, self._store, device_id)
        failure = None
        if reloaded and probe is not None:
            host, port = self._config.broker_address
            failure = await revocation_proof.refused_as_revoked(self._paths, host, port, probe)
            if failure is None:
                logger.info("proven: the broker refuses %s's certificates as revoked", device_id)
            else:
                logger.error("revocation of %s NOT proven: %s", device_id, failure)
        return Revocation(
            device_id=device_id,
            revoked_at=device.revoked_at,
            certificates=len(certificates),
            broker_reloaded=reloaded,
            disconnected=disconnected,
            already_revoked=device.revoked_at != now,
            proof_failure=failure,
        )

    async def _hub_running(self) -> bool:
        """A hub runs this folder's broker: this one, or the holder of its lock."""
        if self._broker is not None:
            return True
        return await asyncio.to_thread(datalock.holder, self._paths.root) is not None

    async def _reload(self) -> bool:
        if not self._config.managed_broker:
            logger.warning(
                "external broker: reload it so that it reads the CRL %s",
                crl_file(self._paths),
            )
            return False
        if self._broker is not None:
            return await self._broker.reload()
        reloaded = await reload_running(self._paths)
        if not reloaded:
            logger.info("the hub's broker is not running; it reads the CRL when it starts")
        return reloaded
