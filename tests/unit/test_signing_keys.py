"""The hub's signing key as the agent reads it: an Ed25519 PEM "PUBLIC KEY" block, read
without cryptography's general key loader, refusing anything else by name."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519

from outpost import signing


def _pem(
    key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | x25519.X25519PublicKey,
) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_key_written_as_the_hub_writes_it_is_read_and_verifies() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    written = _pem(private.public_key())

    for pem in (written, written.replace(b"\n", b"\r\n"), b"\n" + written + b"\n\n"):
        key = signing.load_public_pem(pem, "signing.pub")
        assert key.public_bytes_raw() == private.public_key().public_bytes_raw()
        signed = signing.sign(private, {"version": 3})
        assert signing.open_signed(key, signed, "policy") == {"version": 3}


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        (b"", "not a PEM public key"),
        (b"\xff\xfe", "not a PEM public key"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a PEM"),
        (b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n", "not valid base64"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not an Ed25519"),
        (_pem(ec.generate_private_key(ec.SECP256R1()).public_key()), "not an Ed25519"),
    ],
    ids=["empty", "binary", "a certificate", "bad base64", "too short", "an EC key"],
)
def test_anything_but_an_ed25519_public_key_is_refused_naming_the_file(
    pem: bytes, words: str
) -> None:
    with pytest.raises(ValueError, match=words) as refused:
        signing.load_public_pem(pem, "/data/hub-signing.pub")

    assert "/data/hub-signing.pub" in str(refused.value)


def test_the_same_length_with_another_algorithm_is_refused() -> None:
    """An X25519 key has an Ed25519 key's length; only its algorithm tells them apart."""
    x_pem = _pem(x25519.X25519PrivateKey.generate().public_key())

    with pytest.raises(ValueError, match="not an Ed25519"):
        signing.load_public_pem(x_pem, "signing.pub")
