"""The raw limit of an enrollment: its parts, bare, in the same run.

A device enrolling does, at the least: make a P-256 key and keep it (0600, synced), sign
a CSR, fetch the CA over an unverified TLS connection and check it against the pin, post
the CSR over a second connection that trusts that CA, check the certificate that comes
back, and keep it and the CA (synced). The hub, at the least: check the CSR's signature,
issue a certificate with its CA key, and commit one row (synced). Here those parts run
with nothing else: a bare aiohttp server with the hub's TLS certificate and CA, in the
same process as the client, as the bench's hub is. No token, no profile, no registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import sqlite3
import ssl
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from outpost import tls
from tests.bench.common import make_hub
from tests.support import free_port


def _keep(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a new `path` and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


async def enroll_floor(root: Path, count: int) -> list[float]:
    """Seconds each of `count` bare enrollments took, one after another."""
    paths, _ = make_hub(root / "hub")
    ca_pem = paths.ca_cert.read_bytes()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    pin = hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    db = sqlite3.connect(root / "floor.db", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE devices (serial TEXT PRIMARY KEY, cert TEXT)")

    def register(serial: str, cert: str) -> None:
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO devices VALUES (?, ?)", (serial, cert))

    async def ca(_: web.Request) -> web.Response:
        return web.Response(body=ca_pem)

    async def sign(request: web.Request) -> web.Response:
        csr = x509.load_pem_x509_csr((await request.json())["csr"].encode())
        assert csr.is_signature_valid
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(ca_cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(ca_key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        await asyncio.to_thread(register, format(cert.serial_number, "x"), pem)
        return web.json_response({"certificate": pem})

    app = web.Application()
    app.router.add_get("/ca", ca)
    app.router.add_post("/csr", sign)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        port = free_port()
        server_ctx = tls.server_context(paths.server_cert, paths.server_key)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ctx).start()
        url = f"https://127.0.0.1:{port}"
        took = []
        for n in range(count):
            folder = root / f"device-{n}"
            folder.mkdir()
            started = time.perf_counter()
            await _enroll(url, folder, pin)
            took.append(time.perf_counter() - started)
        return took
    finally:
        await runner.cleanup()
        db.close()


async def _enroll(url: str, folder: Path, pin: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    await asyncio.to_thread(_keep, folder / "device.key", pem, 0o600)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    async with aiohttp.ClientSession() as session, session.get(f"{url}/ca", ssl=unverified) as got:
        ca_pem = await got.read()
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    assert hashlib.sha256(ca_cert.public_bytes(serialization.Encoding.DER)).hexdigest() == pin
    trusting = ssl.create_default_context(cadata=ca_pem.decode())
    body = {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/csr", json=body, ssl=trusting) as answered,
    ):
        cert_pem = (await answered.json())["certificate"].encode()
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.public_key() == key.public_key()
    await asyncio.to_thread(_keep, folder / "device.crt", cert_pem, 0o644)
    await asyncio.to_thread(_keep, folder / "ca.crt", ca_pem, 0o644)
