"""The fleet's certificate authority: create it, issue certificates, check CSRs."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825
CLOCK_SKEW = dt.timedelta(minutes=5)
# Named curves we accept from devices; anything smaller than P-256 is weak.
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
MIN_RSA_BITS = 2048

CaKey = ec.EllipticCurvePrivateKey


class CsrError(ValueError):
    """A certificate signing request is malformed, badly signed or has a weak key."""


@dataclass(frozen=True)
class Issued:
    """A certificate and the validity window the registry records."""

    pem: bytes
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """Return a new P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """Serialise a private key as unencrypted PKCS#8 PEM (protected by file mode 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str) -> tuple[CaKey, x509.Certificate]:
    """Create a self-signed fleet CA on P-256, valid for ten years."""
    key = new_ec_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(
    ca_key: CaKey,
    ca_cert: x509.Certificate,
    *,
    common_name: str,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    days: float,
    server_names: list[str] | None = None,
) -> Issued:
    """Issue a leaf certificate: a client certificate, or a server one with `server_names`."""
    now = _now()
    lifetime = dt.timedelta(days=days)
    # Backdated to tolerate small clock skew on devices, but by at most a tenth of the
    # lifetime: devices renew at a fraction of not_before..not_after, which must stay
    # mostly ahead of them even for a certificate of seconds (tests).
    not_before = now - min(CLOCK_SKEW, lifetime / 10)
    not_after = now + lifetime
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    # The validity as the certificate encodes it (whole seconds), so the registry's
    # expiry and the one TLS and renewals judge by are the same instant.
    return Issued(
        cert_pem(cert), cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc
    )


def check_csr(csr_pem: bytes) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """Return the public key of a well-formed, self-signed CSR with a strong key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrError("the CSR is not a valid PEM certificate request") from exc
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not verify")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ACCEPTED_CURVES):
            raise CsrError(f"weak key: curve {key.curve.name} (use P-256 or stronger)")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(f"weak key: RSA {key.key_size} bits (at least {MIN_RSA_BITS})")
        return key
    raise CsrError(f"unsupported key type {type(key).__name__} (use EC P-256)")


def load_ca(key_pem_bytes: bytes, cert_pem_bytes: bytes) -> tuple[CaKey, x509.Certificate]:
    """Load the CA's key and certificate from PEM."""
    key = serialization.load_pem_private_key(key_pem_bytes, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an EC key")
    return key, x509.load_pem_x509_certificate(cert_pem_bytes)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
