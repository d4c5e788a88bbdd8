"""Unit tests of hub/fleet/bootstrap.py: one-time EdDSA-signed enrollment tokens."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hub.fleet import bootstrap
from hub.fleet.bootstrap import BootstrapTokenError

HUB_URL = "https://hub.example:8443"
CAF = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def mint(key: ed25519.Ed25519PrivateKey, **kwargs: Any) -> tuple[str, bootstrap.BootstrapClaims]:
    kwargs.setdefault("hub_url", HUB_URL)
    kwargs.setdefault("ca_fingerprint", CAF)
    kwargs.setdefault("ttl", 600)
    kwargs.setdefault("labels", {"site": "north", "line": "3"})
    return bootstrap.mint(key, **kwargs)


def payload_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return decoded


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def valid_payload(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    payload: dict[str, Any] = {
        "typ": bootstrap.TOKEN_TYPE,
        "aud": bootstrap.AUDIENCE,
        "jti": "abc",
        "iat": now,
        "exp": now + 600,
        "url": HUB_URL,
        "caf": CAF,
        "labels": {},
    }
    payload.update(changes)
    return payload


def refused(token: str, key: ed25519.Ed25519PrivateKey, **kwargs: Any) -> BootstrapTokenError:
    with pytest.raises(BootstrapTokenError) as info:
        bootstrap.verify(token, key.public_key(), **kwargs)
    return info.value


# ---------------------------------------------------------------------------- accepted


def test_mint_verify_round_trip(key: ed25519.Ed25519PrivateKey) -> None:
    token, minted = mint(key)
    claims = bootstrap.verify(token, key.public_key())
    assert claims.jti == minted.jti
    assert claims.hub_url == HUB_URL
    assert claims.ca_fingerprint == CAF
    assert claims.labels == {"site": "north", "line": "3"}
    assert claims.expires_at == int(minted.expires_at)


def test_mint_returns_matching_claims(key: ed25519.Ed25519PrivateKey) -> None:
    token, claims = mint(key, ttl=120, now=time.time())
    payload = payload_of(token)
    assert payload["typ"] == bootstrap.TOKEN_TYPE
    assert payload["aud"] == bootstrap.AUDIENCE
    assert payload["jti"] == claims.jti
    assert payload["exp"] - payload["iat"] in (119, 120, 121)
    assert payload["labels"] == claims.labels
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"


def test_each_token_has_its_own_jti(key: ed25519.Ed25519PrivateKey) -> None:
    ids = {mint(key)[1].jti for _ in range(10)}
    assert len(ids) == 10
    assert all(len(jti) >= 16 for jti in ids)


def test_empty_labels(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(key, labels={})
    assert bootstrap.verify(token, key.public_key()).labels == {}


def test_verify_at_a_time_before_expiry(key: ed25519.Ed25519PrivateKey) -> None:
    now = time.time()
    token, _ = mint(key, ttl=600, now=now)
    assert bootstrap.verify(token, key.public_key(), now=now + 300).jti


# ---------------------------------------------------------------------------- refused


def test_expired_token_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(key, ttl=60, now=time.time() - 86400)
    assert "expired" in str(refused(token, key))


def test_token_expired_at_the_given_time_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    now = time.time()
    token, claims = mint(key, ttl=600, now=now)
    assert "expired" in str(refused(token, key, now=claims.expires_at + 1))


def test_token_signed_by_another_key_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(ed25519.Ed25519PrivateKey.generate())
    assert "signature" in str(refused(token, key))


def test_tampered_payload_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(key)
    header, payload, signature = token.split(".")
    middle = len(payload) // 2
    flipped = "B" if payload[middle] != "B" else "C"
    tampered = ".".join([header, payload[:middle] + flipped + payload[middle + 1 :], signature])
    assert tampered != token
    refused(tampered, key)


def test_payload_swapped_for_another_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(key, labels={"role": "camera"})
    header, _payload, signature = token.split(".")
    forged = b64(json.dumps(valid_payload(labels={"role": "admin"})).encode())
    refused(f"{header}.{forged}.{signature}", key)


def test_tampered_signature_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(key)
    header, payload, signature = token.split(".")
    flipped = "A" if signature[5] != "A" else "B"
    refused(f"{header}.{payload}.{signature[:5]}{flipped}{signature[6:]}", key)


def test_alg_none_token_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    no_key: Any = None  # PyJWT's "none" algorithm takes no key; its stubs want one
    token = jwt.encode(valid_payload(), no_key, algorithm="none")
    assert jwt.get_unverified_header(token)["alg"] == "none"
    refused(token, key)


def test_hand_built_alg_none_token_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64(json.dumps(valid_payload()).encode())
    refused(f"{header}.{payload}.", key)


def test_alg_none_header_on_a_real_signature_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token, _ = mint(key)
    _header, payload, signature = token.split(".")
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    refused(f"{header}.{payload}.{signature}", key)


def test_hmac_token_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token = jwt.encode(valid_payload(), "a shared secret of thirty-two bytes", algorithm="HS256")
    refused(token, key)


def test_es256_token_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token = jwt.encode(valid_payload(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    refused(token, key)


@pytest.mark.parametrize("typ", ["outpost-api", "", None, "OUTPOST-ENROLL"])
def test_token_of_another_type_is_refused(key: ed25519.Ed25519PrivateKey, typ: Any) -> None:
    token = jwt.encode(valid_payload(typ=typ), key, algorithm="EdDSA")
    assert "not a bootstrap token" in str(refused(token, key))


def test_token_without_type_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    payload = valid_payload()
    del payload["typ"]
    refused(jwt.encode(payload, key, algorithm="EdDSA"), key)


def test_token_for_another_audience_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    refused(jwt.encode(valid_payload(aud="someone-else"), key, algorithm="EdDSA"), key)


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "aud"])
def test_token_missing_a_required_claim_is_refused(
    key: ed25519.Ed25519PrivateKey, claim: str
) -> None:
    payload = valid_payload()
    del payload[claim]
    refused(jwt.encode(payload, key, algorithm="EdDSA"), key)


def test_token_with_labels_that_are_not_a_map_is_refused(key: ed25519.Ed25519PrivateKey) -> None:
    token = jwt.encode(valid_payload(labels=["a", "b"]), key, algorithm="EdDSA")
    assert "labels" in str(refused(token, key))


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c", "a.b.c.d", "..."])
def test_garbage_is_refused(key: ed25519.Ed25519PrivateKey, garbage: str) -> None:
    refused(garbage, key)


def test_bootstrap_token_error_is_a_value_error() -> None:
    assert issubclass(BootstrapTokenError, ValueError)
