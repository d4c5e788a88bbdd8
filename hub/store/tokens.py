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


def consume_enroll_token(db: Sql, jti: str, now: float) -> dict[str, str]:
    with db.write():
        row = db.execute(
            "SELECT expires_at, labels, used_at FROM enroll_tokens WHERE jti = ?", (jti,)
        ).fetchone()
        if row is None:
            raise TokenRefusedError("unknown token (not issued by this hub)")
        if row["used_at"] is not None:
            raise TokenRefusedError("token already used")
        if row["expires_at"] <= now:
            raise TokenRefusedError("token expired")
        db.execute("UPDATE enroll_tokens SET used_at = ? WHERE jti = ?", (now, jti))
    labels: dict[str, str] = json.loads(row["labels"])
    return labels


def bind_enroll_token(db: Sql, jti: str, device_id: str) -> None:
    db.execute("UPDATE enroll_tokens SET device_id = ? WHERE jti = ?", (device_id, jti))


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
