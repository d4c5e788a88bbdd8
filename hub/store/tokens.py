"""Tokens: one-time bootstrap tokens for enrollment, and API tokens (for revocation)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from hub.store.sql import Sql


class TokenRefusedError(ValueError):
    """A bootstrap token is unknown, already used or expired."""


def add_enroll_token(
    db: Sql, jti: str, now: float, expires_at: float, labels: dict[str, str]
) -> None:
    db.execute(
        "INSERT INTO enroll_tokens (jti, created_at, expires_at, labels) VALUES (?, ?, ?, ?)",
        (jti, now, expires_at, json.dumps(labels, sort_keys=True)),
    )


@dataclass(frozen=True)
class Consumed:
    """A bootstrap token taken: the labels it gives, and the device it enrolls."""

    labels: dict[str, str]
    device_id: str
    again: bool  # the same device asking again (its first answer was lost)
    certificate_pem: str | None = None  # what the first answer gave, when `again`


def consume_enroll_token(
    db: Sql, jti: str, now: float, key_sha256: str, device_id: str
) -> Consumed:
    """Use the token up for the key `key_sha256`, enrolling `device_id`; or, if it was
    used for that same key and has not expired, the device it enrolled then (the answer
    was lost: a timeout, a cut link, Ctrl-C before it was saved). Another key, or a
    token past its time, is refused with `TokenRefusedError`."""
    with db.write():
        row = db.execute(
            """SELECT expires_at, labels, used_at, device_id, key_sha256, certificate_pem,
                   revoked_at FROM enroll_tokens WHERE jti = ?""",
            (jti,),
        ).fetchone()
        if row is None:
            raise TokenRefusedError("unknown token (not issued by this hub)")
        if row["revoked_at"] is not None:
            raise TokenRefusedError("token revoked")
        if row["expires_at"] <= now:
            raise TokenRefusedError("token already used" if row["used_at"] else "token expired")
        labels: dict[str, str] = json.loads(row["labels"])
        if row["used_at"] is not None:
            if row["key_sha256"] != key_sha256 or not row["device_id"]:
                raise TokenRefusedError("token already used")
            return Consumed(
                labels, row["device_id"], again=True, certificate_pem=row["certificate_pem"]
            )
        db.execute(
            "UPDATE enroll_tokens SET used_at = ?, key_sha256 = ?, device_id = ? WHERE jti = ?",
            (now, key_sha256, device_id, jti),
        )
    return Consumed(labels, device_id, again=False)


def revoke_enroll_token(db: Sql, jti: str, now: float) -> str:
    """Revoke a bootstrap token: "revoked", "already revoked" or "unknown". A used one
    too: its device keeps its certificate, but the token's window for a device asking
    again (its answer lost) ends."""
    with db.write():
        row = db.execute("SELECT revoked_at FROM enroll_tokens WHERE jti = ?", (jti,)).fetchone()
        if row is None:
            return "unknown"
        if row["revoked_at"] is not None:
            return "already revoked"
        db.execute("UPDATE enroll_tokens SET revoked_at = ? WHERE jti = ?", (now, jti))
    return "revoked"


def keep_enroll_answer(db: Sql, jti: str, certificate_pem: str) -> None:
    """Keep the certificate the token's enrollment issued, for the same device asking
    again: before, each ask issued one more, with no spacing (unlike renewals), every
    one of them listed in the CRL once the device was revoked."""
    db.execute(
        "UPDATE enroll_tokens SET certificate_pem = ? WHERE jti = ? AND certificate_pem IS NULL",
        (certificate_pem, jti),
    )


@dataclass(frozen=True)
class ApiTokenRecord:
    """An API token the hub issued (never the token itself, only what identifies it)."""

    jti: str
    subject: str
    role: str
    kind: str
    issued_at: float
    expires_at: float
    revoked_at: float | None
    cursor: int


def add_api_token(db: Sql, record: ApiTokenRecord) -> None:
    db.execute(
        """INSERT INTO api_tokens (jti, subject, role, kind, issued_at, expires_at)
           VALUES (?, ?, ?, ?, ?, ?)""",
        (record.jti, record.subject, record.role, record.kind, record.issued_at, record.expires_at),
    )


def api_token_state(db: Sql, jti: str) -> str:
    """Return "active", "revoked" or "unknown" (not issued by this hub)."""
    row = db.execute("SELECT revoked_at FROM api_tokens WHERE jti = ?", (jti,)).fetchone()
    if row is None:
        return "unknown"
    return "active" if row["revoked_at"] is None else "revoked"


def revoke_api_token(db: Sql, jti: str, now: float) -> str:
    """Revoke; return "revoked", "already revoked" or "unknown"."""
    with db.write():
        state = api_token_state(db, jti)
        if state != "active":
            return "already revoked" if state == "revoked" else "unknown"
        db.execute("UPDATE api_tokens SET revoked_at = ? WHERE jti = ?", (now, jti))
    return "revoked"


def list_api_tokens(db: Sql, *, after: int | None, limit: int) -> list[ApiTokenRecord]:
    """A page of issued tokens in issue order (keyset on rowid)."""
    # rowid: SQLite's own; on PostgreSQL a column that migration 002 adds.
    query = "SELECT rowid AS cursor, * FROM api_tokens WHERE rowid > ? ORDER BY rowid"
    if limit >= 0:
        rows = db.execute(f"{query} LIMIT ?", (after or 0, limit)).fetchall()
    else:
        rows = db.execute(query, (after or 0,)).fetchall()
    return [
        ApiTokenRecord(
            jti=r["jti"],
            subject=r["subject"],
            role=r["role"],
            kind=r["kind"],
            issued_at=r["issued_at"],
            expires_at=r["expires_at"],
            revoked_at=r["revoked_at"],
            cursor=r["cursor"],
        )
        for r in rows
    ]
