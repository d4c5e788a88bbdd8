"""API tokens: EdDSA-signed JWTs with a role, short-lived by default, revocable by id.

A token carries `iss`, `sub`, `role`, `jti`, `iat`, `exp`, a type and an audience of its own,
so a bootstrap token can never pass for an API token nor the reverse. The hub records
every token it issues; one it has no record of, or has revoked, is refused.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Final, Literal, get_args

import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.access.roles import RANK as RANK  # re-exported: the token's callers use them here
from hub.access.roles import ROLES as ROLES
from hub.access.roles import Role as Role
from hub.access.roles import grants
from hub.fleet import bootstrap
from hub.store import ApiTokenRecord
from outpost.durations import describe

Kind = Literal["session", "api-key"]

TOKEN_TYPE: Final = "outpost-api"  # noqa: S105 - a type tag, not a secret
AUDIENCE: Final = "outpost-hub-api"
ISSUER: Final = "outpost-hub"
ALGORITHM: Final = "EdDSA"
SESSION_TTL_DEFAULT: Final = 15 * 60.0
SESSION_TTL_MAX: Final = 12 * 3600.0
API_KEY_TTL_DEFAULT: Final = 90 * 86400.0
API_KEY_TTL_MAX: Final = 366 * 86400.0
_SUBJECT: Final = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")
MALFORMED: Final = (
    "the token is empty or not a token (an API token is three base64url parts joined "
    "by dots, as `outpost-hub token create` prints it)"
)


class ApiTokenError(ValueError):
    """A token is malformed, badly signed, expired or not an API token."""


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    role: Role
    jti: str
    kind: Kind
    issued_at: float
    expires_at: float

    def may(self, role: Role) -> bool:
        """Whether this principal holds `role`, or one that grants it (roles.py)."""
        return grants(self.role, role)


def check_request(role: str, subject: str, ttl: float, kind: Kind) -> None:
    """Refuse a role, subject or lifetime out of bounds, naming which (ValueError)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {_shown(role)}")
    if not _SUBJECT.fullmatch(subject):
        raise ValueError(
            f"subject must be 1-64 of letters, digits and _.@:-, got {_shown(subject)}"
        )
    limit = API_KEY_TTL_MAX if kind == "api-key" else SESSION_TTL_MAX
    if not 0 < ttl <= limit:
        longer = (
            f" (an api-key may last up to {describe(API_KEY_TTL_MAX)})" if kind == "session" else ""
        )
        noun = "an api-key" if kind == "api-key" else "a session"
        raise ValueError(
            f"the ttl of {noun} must be positive and at most {describe(limit)}, "
            f"got {describe(ttl)}{longer}"
        )


def _shown(value: str, limit: int = 80) -> str:
    """A refused value quoted for its message, its start only when long: the error of
    a 100,000-character subject need not repeat it (nor an audit line, nor a log)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:40]!r}... ({len(value):,} characters)"


def mint(
    key: ed25519.Ed25519PrivateKey,
    *,
    role: Role,
    subject: str,
    ttl: float,
    kind: Kind = "session",
    now: float | None = None,
) -> tuple[str, Principal]:
    """Return a signed token and what it grants (record the grant before handing it out)."""
    check_request(role, subject, ttl, kind)
    issued = time.time() if now is None else now
    principal = Principal(
        subject=subject,
        role=role,
        # Hex, not urlsafe base64: an id that starts with "-" reads as an option to
        # `outpost-hub token revoke JTI` (1 token in 64 could not be revoked by its id).
        jti=secrets.token_hex(8),
        kind=kind,
        issued_at=float(int(issued)),
        expires_at=float(int(issued + ttl)),
    )
    payload = {
        "typ": TOKEN_TYPE,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "role": role,
        "kind": kind,
        "jti": principal.jti,
        "iat": int(principal.issued_at),
        "exp": int(principal.expires_at),
    }
    return jwt.encode(payload, key, algorithm=ALGORITHM), principal


def verify(token: str, key: ed25519.Ed25519PublicKey) -> Principal:
    """Check signature, audience, type and expiry (the caller checks revocation)."""
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            options={"require": ["exp", "iat", "jti", "sub", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise ApiTokenError("token expired") from exc
    except jwt.InvalidSignatureError as exc:
        raise ApiTokenError("token signature does not verify") from exc
    except jwt.DecodeError as exc:  # PyJWT's words here ("Not enough segments") say little
        raise ApiTokenError(MALFORMED) from exc
    except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
        raise ApiTokenError(_not_an_api_token(token, str(exc))) from exc
    except jwt.InvalidAlgorithmError as exc:
        raise ApiTokenError(_not_an_api_token(token, f"not signed with {ALGORITHM}")) from exc
    except jwt.PyJWTError as exc:
        raise ApiTokenError(f"token invalid: {exc}") from exc
    # Tokens issued before `iss` was added carry none; one that names another issuer
    # was never meant for this hub (RFC 8725 section 3.8).
    if "iss" in claims and claims["iss"] != ISSUER:
        raise ApiTokenError("token issued by another issuer")
    role, kind = claims.get("role"), claims.get("kind", "session")
    # Tuples, not the RANK dict: a role that is a list or a map is unhashable.
    if claims.get("typ") != TOKEN_TYPE or role not in ROLES or kind not in get_args(Kind):
        raise ApiTokenError("not an Outpost API token")
    return Principal(
        subject=str(claims["sub"]),
        role=role,
        jti=str(claims["jti"]),
        kind=kind,
        issued_at=float(claims["iat"]),
        expires_at=float(claims["exp"]),
    )


def _not_an_api_token(token: str, why: str) -> str:
    """Say what the token is instead, where its (unverified) type tells: a device's
    bootstrap token in an API client's token file is an easy mistake to make."""
    try:
        kind = jwt.decode(token, options={"verify_signature": False}).get("typ")
    except jwt.PyJWTError:
        kind = None
    if kind == bootstrap.TOKEN_TYPE:
        return (
            "not an API token but a device's bootstrap token (from `outpost-hub enroll-token`);"
            " API tokens come from `outpost-hub token create`"
        )
    return f"not an Outpost API token: {why}"


def grant_record(principal: Principal) -> ApiTokenRecord:
    """What the store keeps of an issued token: its id and grant, never the token."""
    return ApiTokenRecord(
        jti=principal.jti,
        subject=principal.subject,
        role=principal.role,
        kind=principal.kind,
        issued_at=principal.issued_at,
        expires_at=principal.expires_at,
        revoked_at=None,
        cursor=0,
    )
