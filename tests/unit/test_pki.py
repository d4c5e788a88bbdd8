"""Unit tests of hub/fleet/pki.py: the fleet CA, issued certificates and CSR checks."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.fleet import pki
from hub.fleet.pki import CsrError

CsrKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@pytest.fixture(scope="module")
def ca() -> tuple[pki.CaKey, x509.Certificate]:
    return pki.make_ca("Test Fleet CA")


def make_csr(key: CsrKey, common_name: str = "dev-abc123") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def common_name(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(value, str)
    return value


# ---------------------------------------------------------------------------- CA


def test_make_ca_is_a_p256_ca(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    key, cert = ca
    assert isinstance(key.curve, ec.SECP256R1)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert public.public_numbers() == key.public_key().public_numbers()
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert common_name(cert) == "Test Fleet CA"
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)  # self-signed


def test_make_ca_validity(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    _key, cert = ca
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now
    lifetime = cert.not_valid_after_utc - now
    assert dt.timedelta(days=pki.CA_DAYS - 1) < lifetime <= dt.timedelta(days=pki.CA_DAYS)


def test_two_cas_differ() -> None:
    first_key, first = pki.make_ca("a")
    second_key, second = pki.make_ca("a")
    assert first.serial_number != second.serial_number
    assert first_key.public_key().public_numbers() != second_key.public_key().public_numbers()
    # Same name, other key: the signature does not verify.
    with pytest.raises(InvalidSignature):
        second.verify_directly_issued_by(first)


def test_pem_round_trip_through_load_ca(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    key, cert = ca
    loaded_key, loaded_cert = pki.load_ca(pki.key_pem(key), pki.cert_pem(cert))
    assert loaded_cert == cert
    assert loaded_key.private_numbers() == key.private_numbers()
    assert pki.key_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_load_ca_refuses_a_non_ec_key(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    _key, cert = ca
    with pytest.raises(ValueError, match="not an EC key"):
        pki.load_ca(pki.key_pem(ed25519.Ed25519PrivateKey.generate()), pki.cert_pem(cert))


# ---------------------------------------------------------------------------- issue


def test_client_certificate(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    device_key = pki.new_ec_key()
    issued = pki.issue(
        ca_key, ca_cert, common_name="dev-abc123", public_key=device_key.public_key(), days=90
    )
    cert = x509.load_pem_x509_certificate(issued.pem)
    assert common_name(cert) == "dev-abc123"
    assert cert.issuer == ca_cert.subject
    cert.verify_directly_issued_by(ca_cert)
    assert cert.serial_number == issued.serial
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == device_key.public_key().public_numbers()


@pytest.mark.parametrize("days", [1, 90, 0.5, 3650])
def test_validity_days_are_honoured(ca: tuple[pki.CaKey, x509.Certificate], days: float) -> None:
    ca_key, ca_cert = ca
    before = dt.datetime.now(dt.UTC)
    issued = pki.issue(
        ca_key, ca_cert, common_name="d", public_key=pki.new_ec_key().public_key(), days=days
    )
    after = dt.datetime.now(dt.UTC)
    cert = x509.load_pem_x509_certificate(issued.pem)
    # X.509 times have whole seconds.
    assert cert.not_valid_after_utc == issued.not_after.replace(microsecond=0)
    assert cert.not_valid_before_utc == issued.not_before.replace(microsecond=0)
    second = dt.timedelta(seconds=1)
    assert before + dt.timedelta(days=days) - second <= cert.not_valid_after_utc
    assert cert.not_valid_after_utc <= after + dt.timedelta(days=days)
    assert cert.not_valid_before_utc <= before  # valid at once despite clock skew
    assert before - cert.not_valid_before_utc <= dt.timedelta(minutes=5) + second


def test_serials_are_unique(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    public = pki.new_ec_key().public_key()
    serials = {
        pki.issue(ca_key, ca_cert, common_name="d", public_key=public, days=1).serial
        for _ in range(5)
    }
    assert len(serials) == 5


def test_server_certificate_has_sans(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    issued = pki.issue(
        ca_key,
        ca_cert,
        common_name="hub",
        public_key=pki.new_ec_key().public_key(),
        days=pki.SERVER_DAYS,
        server_names=["hub.example", "localhost", "127.0.0.1", "::1"],
    )
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(ca_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub.example", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_issue_for_an_rsa_key(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issued = pki.issue(ca_key, ca_cert, common_name="d", public_key=rsa_key.public_key(), days=1)
    cert = x509.load_pem_x509_certificate(issued.pem)
    cert.verify_directly_issued_by(ca_cert)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)


def test_certificate_from_another_ca_does_not_chain(
    ca: tuple[pki.CaKey, x509.Certificate],
) -> None:
    other_key, other_cert = pki.make_ca("Other CA")
    issued = pki.issue(
        other_key, other_cert, common_name="d", public_key=pki.new_ec_key().public_key(), days=1
    )
    cert = x509.load_pem_x509_certificate(issued.pem)
    with pytest.raises(ValueError, match="issuer"):
        cert.verify_directly_issued_by(ca[1])


# ---------------------------------------------------------------------------- CSRs


def test_check_csr_accepts_p256() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    public = pki.check_csr(make_csr(key))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("curve", [ec.SECP384R1(), ec.SECP521R1()])
def test_check_csr_accepts_larger_nist_curves(curve: ec.EllipticCurve) -> None:
    key = ec.generate_private_key(curve)
    public = pki.check_csr(make_csr(key))
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == curve.name


def test_check_csr_accepts_rsa_2048() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = pki.check_csr(make_csr(key))
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048


def _small_curve() -> ec.EllipticCurve:
    for curve in (ec.SECP192R1(), ec.SECP224R1()):
        try:
            ec.generate_private_key(curve)
        except Exception:  # noqa: S112 - try the next curve this OpenSSL supports
            continue
        return curve
    pytest.fail("no small curve available to build a weak CSR")


def test_check_csr_refuses_a_small_curve() -> None:
    curve = _small_curve()
    with pytest.raises(CsrError, match="weak key"):
        pki.check_csr(make_csr(ec.generate_private_key(curve)))


def test_check_csr_refuses_a_non_nist_256_bit_curve() -> None:
    # Only the named NIST curves are accepted, not any 256-bit curve.
    with pytest.raises(CsrError, match="weak key"):
        pki.check_csr(make_csr(ec.generate_private_key(ec.SECP256K1())))


def test_check_csr_refuses_rsa_1024() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(CsrError, match="1024"):
        pki.check_csr(make_csr(key))


def test_check_csr_refuses_an_ed25519_key() -> None:
    with pytest.raises(CsrError, match="unsupported key type"):
        pki.check_csr(make_csr(ed25519.Ed25519PrivateKey.generate()))


def _tampered(pem: bytes, old: bytes, new: bytes) -> bytes:
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    assert der.count(old) == 1
    tampered = x509.load_der_x509_csr(der.replace(old, new))
    return tampered.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
def test_check_csr_refuses_a_bad_signature(key_kind: str) -> None:
    key: CsrKey
    if key_kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Change the subject after signing: the CSR still parses, its signature fails.
    pem = _tampered(make_csr(key, "dev-aaaaaa"), b"dev-aaaaaa", b"dev-bbbbbb")
    assert x509.load_pem_x509_csr(pem).subject != x509.load_pem_x509_csr(make_csr(key)).subject
    with pytest.raises(CsrError, match="signature"):
        pki.check_csr(pem)


def test_check_csr_refuses_a_csr_signed_by_another_key() -> None:
    """A CSR carrying one public key but signed by another: proof of possession fails."""
    mine = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    mine_der = x509.load_pem_x509_csr(make_csr(mine, "dev-aaaaaa")).public_bytes(
        serialization.Encoding.DER
    )
    other_der = x509.load_pem_x509_csr(make_csr(other, "dev-aaaaaa")).public_bytes(
        serialization.Encoding.DER
    )
    mine_point = mine.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    other_point = other.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    # `other`'s signed request, with `mine`'s public key swapped in.
    forged = x509.load_der_x509_csr(other_der.replace(other_point, mine_point))
    assert mine_der != forged.public_bytes(serialization.Encoding.DER)
    with pytest.raises(CsrError, match="signature"):
        pki.check_csr(forged.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a csr",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n",
        b"\x00\xff" * 50,
    ],
)
def test_check_csr_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(CsrError):
        pki.check_csr(garbage)


def test_check_csr_refuses_a_certificate(ca: tuple[pki.CaKey, x509.Certificate]) -> None:
    with pytest.raises(CsrError):
        pki.check_csr(pki.cert_pem(ca[1]))


def test_check_csr_refuses_a_der_csr() -> None:
    pem = make_csr(ec.generate_private_key(ec.SECP256R1()))
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CsrError):
        pki.check_csr(der)


def test_csr_error_is_a_value_error() -> None:
    assert issubclass(CsrError, ValueError)
