"""Device revocation: the registry marks the device, a CRL signed by the fleet CA lists
every certificate it was ever issued (until a month after each expired), the broker
re-reads the CRL, and the device's open connection is taken over and closed.

Mosquitto checks the CRL only when a client connects (a SIGHUP reloads it but keeps open
connections), so the hub also takes the device's session over (hub/mqtt/sessions.py).

An external broker reads the CRL where `broker_crl_path` says (the hub writes it there
too) and is told to re-read it by `broker_reload_command`; the hub then proves the
revocation as it does with its own broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import shlex
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hub.broker.managed import BrokerSupervisor, crl_file, reload_running
from hub.config import HubConfig
from hub.fleet import keyfiles, pki, revocation_proof
from hub.fleet.throwaway import ThrowawayCert
from hub.mqtt import sessions
from hub.paths import HubPaths
from hub.store import HubStore, RevokedCert
from outpost import datalock, files

logger = logging.getLogger(__name__)

# A reload command that takes longer is stuck (a `systemctl` waiting on a prompt, say):
# it is killed and the broker counted as not reloaded.
RELOAD_COMMAND_TIMEOUT_S = 30.0
# An external broker acts on a reload after the command returns (a SIGHUP is handled in
# the broker's next loop): the proof is retried for this long before it counts as failed.
EXTERNAL_PROOF_S = 15.0
PROOF_RETRY_S = 0.1


class UnknownDeviceError(LookupError):
    """There is no such device in the registry."""


class BrokerCrlError(OSError):
    """The CRL could not be written to `broker_crl_path`, where the external broker reads
    it (the message says where and why)."""


@dataclass(frozen=True)
class Revocation:
    """What revoking a device did."""

    device_id: str
    revoked_at: float
    certificates: int  # of this device, now listed in the CRL
    # False: no broker re-read the CRL (no managed one runs or it did not confirm; the
    # external one's copy or reload command failed, or none is set)
    broker_reloaded: bool
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
        if entry.held:  # a suspension that ends (hub/mqtt/holds.py); OpenSSL refuses it alike
            line = line.add_extension(
                x509.CRLReason(x509.ReasonFlags.certificate_hold), critical=False
            )
        builder = builder.add_revoked_certificate(line.build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


async def write_crl(paths: HubPaths, store: HubStore, config: HubConfig | None = None) -> int:
    """Write the CRL from the registry (revoked devices, and those held off now) into the
    broker folder, and to `broker_crl_path` if `config` names one; return the serials
    listed. Raise `BrokerCrlError` if the external broker's copy cannot be written."""
    external = Path(config.broker_crl_path) if config and config.broker_crl_path else None
    return await asyncio.to_thread(_write_crl, paths, store, external)


def _write_crl(paths: HubPaths, store: HubStore, external: Path | None) -> int:
    """Read, build and write under a file lock: a `device revoke` command and the hub may
    both write, and the one that writes last must hold what the other just revoked. The
    external copy is written under a lock beside it too: replicas on one machine sharing
    a broker write the same file."""
    paths.broker_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.ExitStack() as locks:
        locks.enter_context(_locked(paths.broker_dir / ".crl.lock"))
        if external is not None:
            try:
                locks.enter_context(_locked(external.with_name(f".{external.name}.lock")))
            except OSError as exc:
                raise _external_error(external, exc) from exc
        pem, listed = current_crl(paths, store)
        # Mosquitto may run as another user than the hub; the CRL is no secret.
        files.replace(crl_file(paths), pem, files.PUBLIC)
        if external is not None:
            try:
                files.replace(external, pem, files.PUBLIC)
            except OSError as exc:
                raise _external_error(external, exc) from exc
    return listed


def current_crl(paths: HubPaths, store: HubStore) -> tuple[bytes, int]:
    """The CRL as the registry says now, and how many serials it lists (blocking: reads
    the CA's files and the registry)."""
    ca_key, ca_cert = keyfiles.fleet_ca(paths.ca_key, paths.ca_cert)
    now = time.time()
    revoked = store.revoked_certs_sync(now) + store.held_certs_sync(now)
    return build_crl(ca_key, ca_cert, revoked, now=now), len(revoked)


def _external_error(path: Path, exc: OSError) -> BrokerCrlError:
    return BrokerCrlError(
        f"cannot write the CRL to broker_crl_path {path}: {exc.strerror or exc} "
        "(the folder must exist and be writable by the hub's user)"
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def prepare(paths: HubPaths, config: HubConfig, store: HubStore) -> set[str]:
    """Write the CRL before the broker starts (Mosquitto will not start without it); an
    external broker gets its copy and is told to re-read it (holds may have ended while
    the hub was down). The devices held as the CRL was made (read just before: one
    that changes meanwhile makes the holds' first check write it again)."""
    held = set(await store.holds(time.time()))
    listed = await write_crl(paths, store, config)
    if config.managed_broker:
        return held
    if config.broker_reload_command:
        await reload_external(config)
    if not config.broker_crl_path or not config.broker_reload_command:
        logger.warning(
            "external broker: set broker_crl_path and broker_reload_command so that it "
            "reads the hub's CRL (%s, %d revoked certificates) after each revocation",
            config.broker_crl_path or crl_file(paths),
            listed,
        )
    return held


async def reload_external(config: HubConfig) -> bool:
    """Run `broker_reload_command` so that an external broker re-reads the CRL; True if it
    ran and exited 0. Its failure is logged, never raised."""
    argv = config.reload_argv
    if not argv:
        logger.warning("external broker: no broker_reload_command; reload it by hand")
        return False
    shown = shlex.join(argv)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except OSError as exc:
        logger.error("broker_reload_command %s could not start: %s", shown, exc)
        return False
    try:
        async with asyncio.timeout(RELOAD_COMMAND_TIMEOUT_S):
            output, _ = await process.communicate()
    except TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        logger.error(
            "broker_reload_command %s did not finish in %.0f s; killed it",
            shown,
            RELOAD_COMMAND_TIMEOUT_S,
        )
        return False
    except asyncio.CancelledError:
        _kill_group(process.pid)  # not left running behind a hub that stops
        raise
    if process.returncode != 0:
        said = output.decode(errors="replace").strip()[-500:]
        logger.error(
            "broker_reload_command %s exited with status %s: %s",
            shown,
            process.returncode,
            said or "(no output)",
        )
        return False
    logger.info("external broker told to re-read the CRL (%s)", shown)
    return True


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


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
        if await self._provable():
            # Listed in the CRL written next, with the device's other certificates.
            probe = await revocation_proof.issue_probe(self._paths, self._store, device_id)
        try:
            listed = await write_crl(self._paths, self._store, self._config)
        except BrokerCrlError as exc:
            # The registry and the hub's own CRL have it; a second call finishes it.
            logger.error("revoked %s, but the external broker cannot see it: %s", device_id, exc)
            reloaded = False
        else:
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
            failure = await self._prove(probe)
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

    async def _provable(self) -> bool:
        """A broker will be told to re-read the CRL, so a refusal can be proven."""
        if self._config.managed_broker:
            return await self._hub_running()
        return bool(self._config.broker_reload_command)

    async def _prove(self, probe: ThrowawayCert) -> str | None:
        """None once the broker refuses `probe` as revoked; else why not. The managed
        broker confirmed its reload; an external one is given `EXTERNAL_PROOF_S` to act."""
        host, port = self._config.broker_address
        deadline = time.monotonic() + (0 if self._config.managed_broker else EXTERNAL_PROOF_S)
        while True:
            failure = await revocation_proof.refused_as_revoked(self._paths, host, port, probe)
            if failure is None or time.monotonic() >= deadline:
                return failure
            await asyncio.sleep(PROOF_RETRY_S)  # poll: a reload command reports no more

    async def _hub_running(self) -> bool:
        """A hub runs this folder's broker: this one, or the holder of its lock."""
        if self._broker is not None:
            return True
        return await asyncio.to_thread(datalock.holder, self._paths.root) is not None

    async def _reload(self) -> bool:
        if not self._config.managed_broker:
            return await reload_external(self._config)
        if self._broker is not None:
            return await self._broker.reload()
        reloaded = await reload_running(self._paths)
        if not reloaded:
            logger.info("the hub's broker is not running; it reads the CRL when it starts")
        return reloaded
