"""JWT attacks on the hub's API (OWASP WSTG-SESS-10, RFC 8725): every one refused with 401.

Each forged token reuses the claims of a token the hub really issued and recorded, so a
refusal proves the attack failed, not that the token id was unknown.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access import apitokens
from hub.app import Hub
from hub.fleet.enrollment import load_token_key
from tests.api_client import ApiClient
from tests.fuzz.conftest import count

ROUTE = ("GET", "/api/v1/devices")  # any viewer route will do: authentication comes first


@pytest.fixture
def hub_settings() -> str:
    # Every attack fails authentication on purpose: lift the flood guard.
    return "auth_failures_per_min = 100000\napi_rate_burst = 100000\n"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assemble(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    """A compact JWT from a header and claims; `sign(signing_input)` gives the signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def hs256(secret: bytes) -> Any:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


async def recorded_claims(hub: Hub, api: ApiClient, **change: Any) -> dict[str, Any]:
    """The claims of a freshly issued and recorded admin token, changed as asked."""
    token = await api.token("admin")
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    claims.update(change)
    return claims


async def signed_and_recorded(hub: Hub, **change: Any) -> str:
    """A token signed with the hub's real key and recorded, with claims changed."""
    key = load_token_key(hub.paths)
    now = time.time()
    _, principal = apitokens.mint(key, role="admin", subject="attack", ttl=600, now=now)
    await hub.parts.store.add_api_token(apitokens.grant_record(principal))
    claims: dict[str, Any] = {
        "typ": apitokens.TOKEN_TYPE,
        "aud": apitokens.AUDIENCE,
        "sub": "attack",
        "role": "admin",
        "kind": "session",
        "jti": principal.jti,
        "iat": int(now),
        "exp": int(now + 600),
    }
    claims.update(change)
    for name in [name for name, value in claims.items() if value is None]:
        del claims[name]
    # Assembled by hand: PyJWT would refuse to encode some of the malformed claims.
    return assemble({"alg": "EdDSA", "typ": "JWT"}, claims, key.sign)


async def test_the_control_token_is_accepted(hub: Hub, api: ApiClient) -> None:
    """The forging helpers make an acceptable token when nothing is changed."""
    reply = await api.call(*ROUTE, token=await signed_and_recorded(hub))
    assert reply.status == 200, reply.body


async def test_jwt_attacks_are_refused(hub: Hub, api: ApiClient) -> None:
    hub_public = load_token_key(hub.paths).public_key()
    raw_public = hub_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem_public = hub_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stranger = ed25519.Ed25519PrivateKey.generate()
    stranger_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(stranger.public_key()))
    now = int(time.time())
    claims = await recorded_claims(hub, api)
    attacks: dict[str, str] = {}

    for alg in ("none", "None", "NONE", "nOnE"):
        attacks[f"alg {alg}"] = assemble({"alg": alg, "typ": "JWT"}, claims)
        attacks[f"alg {alg} with a signature"] = assemble(
            {"alg": alg}, claims, lambda data: b"x" * 64
        )
    for name, secret in {
        "raw public key": raw_public,
        "PEM public key": pem_public,
        "PEM without newline": pem_public.strip(),
        "public key base64": base64.b64encode(raw_public),
        "empty": b"",
    }.items():
        for alg in ("HS256", "hs256"):
            attacks[f"{alg} keyed with the {name}"] = assemble(
                {"alg": alg, "typ": "JWT"}, claims, hs256(secret)
            )
    attacks["embedded jwk"] = jwt.encode(
        claims, stranger, algorithm="EdDSA", headers={"jwk": stranger_jwk}
    )
    attacks["jku to a stranger's keys"] = jwt.encode(
        claims, stranger, algorithm="EdDSA", headers={"jku": "https://127.0.0.1:1/keys.json"}
    )
    attacks["x5u to a stranger's certificate"] = jwt.encode(
        claims, stranger, algorithm="EdDSA", headers={"x5u": "https://127.0.0.1:1/cert.pem"}
    )
    for kid in ("../../../../dev/null", "/dev/null", "' OR '1'='1", "token.key\x00.pem", "*"):
        attacks[f"kid {kid!r} with a stranger's key"] = jwt.encode(
            claims, stranger, algorithm="EdDSA", headers={"kid": kid}
        )
        attacks[f"kid {kid!r} with an empty HMAC key"] = assemble(
            {"alg": "HS256", "kid": kid}, claims, hs256(b"")
        )
    attacks["crit header not understood"] = await signed_and_recorded(hub)
    attacks["crit header not understood"] = jwt.encode(
        jwt.decode(attacks["crit header not understood"], options={"verify_signature": False}),
        load_token_key(hub.paths),
        algorithm="EdDSA",
        headers={"crit": ["exp-ext"], "exp-ext": True},
    )
    # Signed with the real key and recorded: only the time and audience claims are wrong.
    attacks["expired"] = await signed_and_recorded(hub, iat=now - 7200, exp=now - 3600)
    attacks["not yet valid (nbf)"] = await signed_and_recorded(hub, nbf=now + 3600)
    attacks["issued in the far future (iat)"] = await signed_and_recorded(
        hub, iat=now + 10 * 365 * 86400, exp=now + 11 * 365 * 86400
    )
    attacks["without exp"] = await signed_and_recorded(hub, exp=None)
    attacks["without iat"] = await signed_and_recorded(hub, iat=None)
    attacks["exp not a number"] = await signed_and_recorded(hub, exp="never")
    attacks["another audience"] = await signed_and_recorded(hub, aud="outpost-enroll")
    attacks["audience list without ours"] = await signed_and_recorded(hub, aud=["other", "x"])
    attacks["without an audience"] = await signed_and_recorded(hub, aud=None)
    attacks["another issuer"] = await signed_and_recorded(hub, iss="https://evil.example")
    attacks["issuer not a string"] = await signed_and_recorded(hub, iss=["outpost-hub"])
    attacks["a bootstrap token's type"] = await signed_and_recorded(hub, typ="outpost-bootstrap")
    attacks["role out of range"] = await signed_and_recorded(hub, role="root")

    problems = []
    for name, token in attacks.items():
        count("hub API JWT attacks")
        reply = await api.call(*ROUTE, token=token)
        if reply.status != 401:
            problems.append(f"{name}: {reply.status} {reply.body}")
        elif not reply.error.get("message"):
            problems.append(f"{name}: 401 without a message: {reply.body}")
    assert not problems, "\n".join(problems)
