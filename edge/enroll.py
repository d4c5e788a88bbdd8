"""First contact with the hub: make a key here, send a CSR, keep the certificate.

The token pins the fleet CA by fingerprint: the agent downloads the CA, checks it against
the pin, and only then talks to the hub over TLS verified against that CA. The private
key is created on the device and never leaves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.identity import DevicePaths, Identity
from edge.profile import parse_profile
from outpost import files, tls

logger = logging.getLogger(__name__)

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)

# Said whenever the request may have reached the hub: the hub then holds the token for
# this device's key, and answers that key again.
RUN_AGAIN = "run the same enroll again (the token still works for this device's key)"


class EnrollError(RuntimeError):
    """Enrollment failed; the message says why and what to do. `keep_key`: the request
    may have reached the hub, which then answers this device's key again: a retry works
    only with the same key, so it must stay."""

    def __init__(self, message: str, *, keep_key: bool = False) -> None:
        super().__init__(message)
        self.keep_key = keep_key


async def enroll(token: str, paths: DevicePaths, profile_file: Path, name: str = "") -> Identity:
    """Enroll this device with the hub named in `token`, asking for `name` (the hub
    appends -2, -3, ... when another device has it); return its new identity."""
    try:
        profile_text = await asyncio.to_thread(profile_file.read_text, "utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrollError(f"cannot read profile {profile_file}: {exc}") from exc
    profile = parse_profile(profile_text, str(profile_file))  # refuse it before the hub
    if paths.identity.exists():
        raise EnrollError(f"{paths.root} is already enrolled; use a fresh data folder")
    hub_url, pin = read_token(token)

    paths.identity_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = await asyncio.to_thread(_device_key, paths)
    csr = make_csr(key)

    ca_pem = pinned_ca(await _fetch_ca(hub_url), hub_url, pin)
    reply = await _post_csr(hub_url, ca_pem, token, csr, profile.name, name)

    # The hub took the request, and may hold the token for this key: whatever is wrong
    # with its answer, the folder and the key stay for the retry (only this key works).
    cert_pem = str(reply.get("certificate", "")).encode()
    device_id = str(reply.get("device_id", ""))
    try:
        cert = check_certificate(cert_pem, ca_pem, key, device_id)
    except EnrollError as exc:
        raise EnrollError(f"{exc}; {RUN_AGAIN}", keep_key=True) from exc
    missing = [field for field in ("broker_url", "signing_public_key") if field not in reply]
    if missing:
        raise EnrollError(f"the hub's reply lacks {', '.join(missing)}; {RUN_AGAIN}", keep_key=True)
    identity = Identity(
        device_id=device_id,
        broker_url=str(reply["broker_url"]),
        hub_url=hub_url,
        enrolled_at=time.time(),
        cert_not_after=cert.not_valid_after_utc.timestamp(),
        cert_not_before=cert.not_valid_before_utc.timestamp(),
        name=str(reply.get("name") or device_id),
    )
    signing_pub = str(reply["signing_public_key"]).encode()
    bundle_pub = str(reply.get("bundle_public_key") or "").encode()
    await asyncio.to_thread(
        _save, paths, identity, cert_pem, ca_pem, signing_pub, profile_text.encode(), bundle_pub
    )
    logger.info("enrolled as %s (%s)", identity.name, device_id)
    return identity


def _save(
    paths: DevicePaths,
    identity: Identity,
    cert_pem: bytes,
    ca_pem: bytes,
    signing_pub: bytes,
    profile: bytes,
    bundle_pub: bytes,
) -> None:
    files.replace(paths.cert, cert_pem, files.PUBLIC)
    files.replace(paths.ca_cert, ca_pem, files.PUBLIC)
    files.replace(paths.hub_signing_pub, signing_pub, files.PUBLIC)
    if bundle_pub:  # a hub from before courier bundles sends none
        files.replace(paths.hub_bundle_pub, bundle_pub, files.PUBLIC)
    files.replace(paths.profile, profile, files.PUBLIC)
    identity.save(paths)  # last: its presence marks the enrollment complete


def pinned_ca(ca_pem: bytes, hub_url: str, pin: str) -> bytes:
    """The fleet CA from what the hub's address answered, checked against the token's
    `pin`, as the PEM to trust and keep; raise `EnrollError` saying what is wrong."""
    try:
        certificates = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:  # another server's page on that address, say
        raise EnrollError(
            f"the hub at {hub_url} answered with no CA certificate: is it an Outpost hub, "
            "and the URL in the token right?"
        ) from exc
    # The pin names one certificate. Anything beside it would be trusted unpinned: a
    # CA appended by someone in between would vouch for his server, for the request
    # that carries the token and, kept in identity/ca.crt, for every connection after.
    blocks = ca_pem.count(b"-----BEGIN ")
    if len(certificates) != 1 or blocks != 1:
        raise EnrollError(
            f"the hub at {hub_url} sent {blocks} PEM blocks ({len(certificates)} "
            "certificates) as its CA, where the token pins one certificate; refusing to "
            "enroll (someone in between may have added a CA of his own)"
        )
    if tls.fingerprint(ca_pem) != pin:
        raise EnrollError(
            f"the hub at {hub_url} presents a CA whose fingerprint does not match the token; "
            "refusing to enroll (wrong hub, or someone in between)"
        )
    # Kept as the certificate alone: no text that came around it.
    return certificates[0].public_bytes(serialization.Encoding.PEM)


def read_token(token: str) -> tuple[str, str]:
    """Read the hub URL and CA pin from the token (the hub checks its signature)."""
    if not token.strip():
        raise EnrollError(
            "the bootstrap token is empty: give the one `outpost-hub enroll-token` printed"
        )
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.DecodeError as exc:
        raise EnrollError(
            "the bootstrap token is not a token (it is three base64url parts joined by dots, "
            "as `outpost-hub enroll-token` prints it)"
        ) from exc
    except jwt.PyJWTError as exc:
        raise EnrollError(f"the bootstrap token is malformed: {exc}") from exc
    url, pin, exp = claims.get("url"), claims.get("caf"), claims.get("exp")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise EnrollError("the bootstrap token names no https:// hub URL")
    if not isinstance(pin, str) or not pin.startswith("sha256:"):
        raise EnrollError("the bootstrap token carries no CA fingerprint")
    if isinstance(exp, (int, float)) and exp <= time.time():
        raise EnrollError("the bootstrap token has expired; ask for a new one")
    return url.rstrip("/"), pin


def load_device_key(paths: DevicePaths) -> ec.EllipticCurvePrivateKey:
    """Load the device key (blocking: reads a file)."""
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrollError(f"{paths.key} is not an EC key")
    return key


def _device_key(paths: DevicePaths) -> ec.EllipticCurvePrivateKey:
    """Load the device key, or create it (0600) if an earlier attempt did not."""
    if paths.key.exists():
        return load_device_key(paths)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.write_new(paths.key, pem, files.PRIVATE)
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "outpost-device") -> bytes:
    """A CSR signed with `key`. The hub sets the CN itself (the device id); at enrollment
    this one is a placeholder."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


async def _fetch_ca(hub_url: str) -> bytes:
    # Unverified on purpose: we hold no trust root yet. What comes back is checked
    # against the fingerprint pinned in the token before anything is trusted or sent.
    # A bare context: `create_default_context` also reads the system's trust store, for
    # nothing here (29 ms of an enrollment's 70, profiled).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.get(f"{hub_url}/api/v1/enroll/ca", ssl=context) as response,
        ):
            if response.status != 200:
                raise EnrollError(f"the hub answered {response.status} for its CA")
            return await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise EnrollError(f"cannot reach the hub at {hub_url}: {unreached(exc)}") from exc


async def _post_csr(
    hub_url: str, ca_pem: bytes, token: str, csr: bytes, profile: str, name: str
) -> dict[str, Any]:
    try:
        context = tls.pinned_context(ca_pem, "the CA certificate the hub sent")
    except ssl.SSLError as exc:
        raise EnrollError(str(exc)) from exc
    body = {"token": token.strip(), "csr": csr.decode(), "profile": profile, "name": name}
    try:
        async with (
            aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session,
            session.post(f"{hub_url}/api/v1/enroll", json=body, ssl=context) as response,
        ):
            status, reason = response.status, response.reason or ""
            try:
                reply = await response.json(content_type=None)
            except ValueError:  # a proxy's HTML page, say
                reply = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The hub may have taken the token already: it answers the same key again.
        raise EnrollError(
            f"enrollment request to {hub_url} failed: {unreached(exc)}; {RUN_AGAIN}",
            keep_key=True,
        ) from exc
    error = reply.get("error") if isinstance(reply, dict) else None
    message = error.get("message", reason) if isinstance(error, dict) else reason
    if 400 <= status < 500:  # the hub said no: the token was not taken for this key
        raise EnrollError(f"the hub refused enrollment ({status}): {message}")
    # Any other answer may follow the hub taking the token: a proxy's 502 when the hub
    # was slow, a 201 whose body came back unreadable. The key stays for the retry.
    if status != 201:
        raise EnrollError(
            f"the hub (or a proxy before it) failed the enrollment request ({status}): "
            f"{message}; {RUN_AGAIN}",
            keep_key=True,
        )
    if not isinstance(reply, dict):
        raise EnrollError(f"the hub's reply is not a JSON object; {RUN_AGAIN}", keep_key=True)
    return reply


def unreached(exc: aiohttp.ClientError | TimeoutError) -> str:
    """Why the hub could not be asked, in words. aiohttp's own text for a failed connection
    shows the SSL context's repr and asyncio's "Connect call failed ('127.0.0.1', 8443)";
    the OS says "Connection refused", the resolver that a name is unknown (os.strerror
    would call its negative errno "Unknown error -2")."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its certificate does not verify ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, socket.gaierror):
            return f"cannot resolve the name {exc.host!r} ({error.strerror or error})"
        if error.errno and not isinstance(error, ssl.SSLError):  # SSL's errno is no OS errno
            return os.strerror(error.errno)
        return str(error) or type(error).__name__
    return str(exc) or type(exc).__name__


def check_certificate(
    cert_pem: bytes, ca_pem: bytes, key: ec.EllipticCurvePrivateKey, device_id: str
) -> x509.Certificate:
    """Return the certificate the hub sent, checked: issued by the fleet CA, for our key
    and for our device id; raise `EnrollError` saying what is wrong."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature) as exc:  # another CA's, or garbage
        raise EnrollError(
            f"the hub returned an invalid certificate: {str(exc) or type(exc).__name__}"
        ) from exc
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if mine != theirs:
        raise EnrollError("the hub returned a certificate for another key")
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cn or cn[0].value != device_id:
        raise EnrollError("the certificate's CN is not the device id the hub assigned")
    return cert
