"""One-time bootstrap tokens: an EdDSA-signed JWT naming the hub and pinning its CA.

The token carries what a fresh device needs to reach the hub safely (its URL and the
fingerprint of the fleet CA); the hub's database records each token so it is used once.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

TOKEN_TYPE = "outpost-enroll"  # noqa: S105 - a type tag, not a secret
ALGORITHM = "EdDSA"
AUDIENCE = "outpost-hub"


class BootstrapTokenError(ValueError):
    """A bootstrap token is malformed, tampered with, expired or not ours."""


@dataclass(frozen=True)
class BootstrapClaims:
    """What a verified bootstrap token says."""

    jti: str
    expires_at: float
    hub_url: str
    ca_fingerprint: str
    labels: dict[str, str]


def mint(
    key: ed25519.Ed25519PrivateKey,
    *,
    hub_url: str,
    ca_fingerprint: str,
    ttl: float,
    labels: dict[str, str],
    now: float | None = None,
) -> tuple[str, BootstrapClaims]:
    """Return a signed token and its claims (record the claims before handing it out)."""
    issued = time.time() if now is None else now
    claims = BootstrapClaims(
        jti=secrets.token_urlsafe(16),
        expires_at=issued + ttl,
        hub_url=hub_url,
        ca_fingerprint=ca_fingerprint,
        labels=labels,
    )
    payload: dict[str, Any] = {
        "typ": TOKEN_TYPE,
        "aud": AUDIENCE,
        "jti": claims.jti,
        "iat": int(issued),
        "exp": int(claims.expires_at),
        "url": hub_url,
        "caf": ca_fingerprint,
        "labels": labels,
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM), claims


def verify(
    token: str, key: ed25519.Ed25519PublicKey, *, now: float | None = None
) -> BootstrapClaims:
    """Check signature, type and expiry; return the claims or raise `BootstrapTokenError`."""
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # never "none", never a key-confusion HMAC
            audience=AUDIENCE,
            options={"require": ["exp", "iat", "jti", "aud"]},
            leeway=0,
        )
    except jwt.ExpiredSignatureError as exc:
        raise BootstrapTokenError("bootstrap token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise BootstrapTokenError("bootstrap token signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise BootstrapTokenError(f"bootstrap token invalid: {exc}") from exc
    if payload.get("typ") != TOKEN_TYPE:
        raise BootstrapTokenError("not a bootstrap token")
    if now is not None and payload["exp"] <= now:
        raise BootstrapTokenError("bootstrap token expired")
    labels = payload.get("labels", {})
    if not isinstance(labels, dict):
        raise BootstrapTokenError("bootstrap token labels are not a map")
    return BootstrapClaims(
        jti=str(payload["jti"]),
        expires_at=float(payload["exp"]),
        hub_url=str(payload.get("url", "")),
        ca_fingerprint=str(payload.get("caf", "")),
        labels={str(k): str(v) for k, v in labels.items()},
    )
