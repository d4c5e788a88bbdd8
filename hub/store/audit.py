"""The audit log: who did what, when, and with what result, for every mutating request."""

from __future__ import annotations

from dataclasses import dataclass

from hub.store.sql import Sql


@dataclass(frozen=True)
class AuditEntry:
    """One audited request. `detail` never holds a secret (tokens, keys)."""

    at: float
    subject: str
    role: str | None
    method: str
    path: str
    action: str
    status: int
    detail: str
    id: int = 0


def record(db: Sql, entry: AuditEntry) -> None:
    db.execute(
        """INSERT INTO audit (at, subject, role, method, path, action, status, detail)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            entry.at,
            entry.subject,
            entry.role,
            entry.method,
            entry.path,
            entry.action,
            entry.status,
            entry.detail,
        ),
    )


def newest_first(db: Sql, *, before: int | None, limit: int) -> list[AuditEntry]:
    """A page of the log, newest first, before the entry id `before` (keyset)."""
    rows = db.execute(
        "SELECT * FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
        (before if before is not None else 2**62, limit),
    ).fetchall()
    return [
        AuditEntry(
            id=r["id"],
            at=r["at"],
            subject=r["subject"],
            role=r["role"],
            method=r["method"],
            path=r["path"],
            action=r["action"],
            status=r["status"],
            detail=r["detail"],
        )
        for r in rows
    ]
