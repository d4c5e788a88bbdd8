"""Certificates the hub issues itself for a device's CN, used once and forgotten.

The hub holds no device's private key, but it sometimes has to connect as a device: to
prove that the broker refuses a revoked one (hub/fleet/revocation_proof.py), and to take a
device's MQTT session over (hub/mqtt/sessions.py: the broker's client id is the certificate's
CN, so only a certificate with that CN can end the device's session). It issues a
certificate for the device's CN with a key that lives only in this process's memory,
valid for an hour, and records it among the device's certificates: any CRL that lists
the device's certificates lists this one too.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hub.fleet import keyfiles, pki
from hub.paths import HubPaths
from hub.store import HubStore
from hub.store.certs import IssuedCert

THROWAWAY_DAYS = 1 / 24  # an hour: each is used at once, for one connection


@dataclass(frozen=True)
class ThrowawayCert:
    """A certificate for a device's CN and its key (PEM, kept in memory)."""

    cert_pem: bytes
    key_pem: bytes


async def issue(paths: HubPaths, store: HubStore, device_id: str, *, reason: str) -> ThrowawayCert:
    """Issue a throw-away certificate for `device_id` and record it as one of its own,
    with `reason` ('probe', 'takeover')."""
    cert, record = await asyncio.to_thread(_issue, paths, device_id, reason)
    await store.record_throwaway_cert(record)
    return cert


def _issue(paths: HubPaths, device_id: str, reason: str) -> tuple[ThrowawayCert, IssuedCert]:
    cert, issued = mint(paths, device_id, days=THROWAWAY_DAYS)
    record = IssuedCert(
        serial=format(issued.serial, "x"),
        device_id=device_id,
        not_before=issued.not_before.timestamp(),
        not_after=issued.not_after.timestamp(),
        issued_at=time.time(),
        reason=reason,
    )
    return cert, record


def mint(paths: HubPaths, common_name: str, *, days: float) -> tuple[ThrowawayCert, pki.Issued]:
    """A certificate for `common_name` from the fleet CA, with a new key (reads the CA's
    files: run in a thread)."""
    ca_key, ca_cert = keyfiles.fleet_ca(paths.ca_key, paths.ca_cert)
    key = pki.new_ec_key()
    issued = pki.issue(
        ca_key, ca_cert, common_name=common_name, public_key=key.public_key(), days=days
    )
    return ThrowawayCert(issued.pem, pki.key_pem(key)), issued


def client_context(paths: HubPaths, cert: ThrowawayCert) -> ssl.SSLContext:
    """A TLS 1.2+ client context presenting `cert` (reads files: run in a thread). `ssl` loads
    keys only from files: the key is written to a private temporary folder and removed
    once loaded."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="outpost-throwaway-") as folder:
        cert_file, key_file = Path(folder) / "device.crt", Path(folder) / "device.key"
        cert_file.write_bytes(cert.cert_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(cert.key_pem)
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context
