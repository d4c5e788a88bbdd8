"""Proof that the broker refuses a revoked device, before anyone is told it does.

Reloading the broker is not proof: the reload may read a stale file, or reach another
process than the one devices connect to. The only proof is a connection presenting a
revoked certificate that the broker refuses because it is revoked. The hub holds no
device's private key, so it issues a throw-away certificate for the device's CN with a
key that lives only for the probe, records it among the device's certificates before
the CRL is written (so the CRL that lists it lists all of theirs: a broker refusing it
read that CRL), and connects with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hub import pki
from hub.paths import HubPaths
from hub.store import HubStore
from hub.store.certs import IssuedCert

PROBE_DAYS = 1 / 24  # an hour: it is listed in the CRL at once anyway
PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Probe:
    """A revoked device's probe certificate and its key (PEM, kept in memory)."""

    cert_pem: bytes
    key_pem: bytes


async def issue_probe(paths: HubPaths, store: HubStore, device_id: str) -> Probe:
    """Issue a probe certificate for `device_id` and record it as one of its own."""
    probe, issued = await asyncio.to_thread(_issue, paths, device_id)
    await store.record_probe_cert(issued)
    return probe


def _issue(paths: HubPaths, device_id: str) -> tuple[Probe, IssuedCert]:
    ca_key, ca_cert = pki.load_ca(paths.ca_key.read_bytes(), paths.ca_cert.read_bytes())
    key = pki.new_ec_key()
    issued = pki.issue(
        ca_key, ca_cert, common_name=device_id, public_key=key.public_key(), days=PROBE_DAYS
    )
    record = IssuedCert(
        serial=format(issued.serial, "x"),
        device_id=device_id,
        not_before=issued.not_before.timestamp(),
        not_after=issued.not_after.timestamp(),
        issued_at=time.time(),
        reason="probe",
    )
    return Probe(issued.pem, pki.key_pem(key)), record


async def refused_as_revoked(paths: HubPaths, host: str, port: int, probe: Probe) -> str | None:
    """Connect to the broker with the probe; None if it refused the certificate as
    revoked, else what happened instead (the proof failed)."""
    context = await asyncio.to_thread(_context, paths, probe)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
            try:
                # TLS 1.3 finishes the client's side of the handshake before the server
                # has judged the certificate: its verdict comes with the first read.
                data = await reader.read(1)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except ssl.SSLError as exc:
        if "REVOKED" in str(exc).upper():
            return None
        return f"the broker refused the probe, but not as revoked: {exc}"
    except (OSError, TimeoutError) as exc:
        return f"could not reach the broker at {host}:{port}: {exc!s}"
    if not data:
        return "the broker closed the probe's connection without saying it was revoked"
    return "the broker accepted a revoked certificate"


def _context(paths: HubPaths, probe: Probe) -> ssl.SSLContext:
    """A client context presenting the probe. `ssl` loads keys only from files: the
    key is written to a private temporary folder and removed once loaded."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="outpost-probe-") as folder:
        cert, key = Path(folder) / "probe.crt", Path(folder) / "probe.key"
        cert.write_bytes(probe.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(probe.key_pem)
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return context
