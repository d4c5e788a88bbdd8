"""Device certificates: every one issued (enrollment and renewals), and revocation.

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.store import events, rollouts
from hub.store.devices import Device, get_device
from hub.store.sql import Row, Sql


@dataclass(frozen=True)
class IssuedCert:
    """A certificate the hub issued to a device (serial in lowercase hex)."""

    serial: str
    device_id: str
    not_before: float
    not_after: float
    issued_at: float
    reason: str  # 'enroll' or 'renew'

    @classmethod
    def from_row(cls, row: Row) -> IssuedCert:
        return cls(
            serial=row["serial"],
            device_id=row["device_id"],
            not_before=row["not_before"],
            not_after=row["not_after"],
            issued_at=row["issued_at"],
            reason=row["reason"],
        )


@dataclass(frozen=True)
class RenewalState:
    """What a renewal needs to know about the device named by a presented certificate."""

    device: Device | None
    presented: IssuedCert | None  # the presented serial, if it was issued to this device
    latest_not_after: float | None  # the end of the device's newest certificate
    held_until: float | None = None  # held off for flooding until then (hub/mqtt/holds.py)
    latest_renewal_at: float | None = None  # when its last renewal was issued


@dataclass(frozen=True)
class RevokedCert:
    """One line of the CRL: a serial (hex) and when its device was revoked, or held off
    (`held`: listed as on hold, a suspension that ends; see hub/mqtt/holds.py)."""

    serial: str
    revoked_at: float
    held: bool = False


def renewal_state(db: Sql, device_id: str, serial: str) -> RenewalState:
    row = db.execute(
        "SELECT * FROM device_certs WHERE serial = ? AND device_id = ?", (serial, device_id)
    ).fetchone()
    (latest,) = db.execute(
        "SELECT MAX(not_after) FROM device_certs WHERE device_id = ?", (device_id,)
    ).fetchone()
    (latest_renewal,) = db.execute(
        "SELECT MAX(issued_at) FROM device_certs WHERE device_id = ? AND reason = 'renew'",
        (device_id,),
    ).fetchone()
    held = db.execute("SELECT held_until FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return RenewalState(
        get_device(db, device_id),
        IssuedCert.from_row(row) if row else None,
        latest,
        held["held_until"] if held else None,
        latest_renewal,
    )


def record_renewal(db: Sql, cert: IssuedCert) -> bool:
    """Record a renewed certificate as the device's current one; False (and nothing
    written) if the device was revoked, held off or removed meanwhile (a held device's
    new serial would not be in the CRL that holds it off)."""
    with db.write():
        updated = db.execute(
            """UPDATE devices SET cert_serial = ?, cert_not_before = ?, cert_not_after = ?
               WHERE device_id = ? AND revoked_at IS NULL
                 AND (held_until IS NULL OR held_until <= ?)""",
            (cert.serial, cert.not_before, cert.not_after, cert.device_id, cert.issued_at),
        ).rowcount
        if not updated:
            return False
        _insert(db, cert)
        events.add(db, cert.device_id, cert.issued_at, "renewed", f"certificate {cert.serial}")
    return True


def revoke_device(db: Sql, device_id: str, now: float, by: str) -> Device | None:
    """Mark the device revoked by `by` (keeping the first revocation's time and author)
    and offline, so no task goes to it; None if there is no such device."""
    with db.write():
        first = db.execute(
            "SELECT 1 FROM devices WHERE device_id = ? AND revoked_at IS NULL", (device_id,)
        ).fetchone()
        if first:
            events.add(db, device_id, now, "revoked", f"by {by}")
        # SET reads the row as it was: `revoked_at IS NULL` is true only the first time.
        db.execute(
            """UPDATE devices SET revoked_at = COALESCE(revoked_at, ?),
                   revoked_by = CASE WHEN revoked_at IS NULL THEN ? ELSE revoked_by END,
                   online = 0
               WHERE device_id = ?""",
            (now, by, device_id),
        )
        rollouts.drop_device(db, device_id, "device revoked", now)  # none waits on it
    return get_device(db, device_id)


def _insert(db: Sql, cert: IssuedCert) -> None:
    db.execute(
        """INSERT INTO device_certs (serial, device_id, not_before, not_after, issued_at,
               reason) VALUES (?, ?, ?, ?, ?, ?)""",
        (cert.serial, cert.device_id, cert.not_before, cert.not_after, cert.issued_at, cert.reason),
    )


def record_throwaway(db: Sql, cert: IssuedCert) -> None:
    """Record a certificate the hub issued itself for a device's CN (a revocation probe,
    a session takeover) among the device's, so a CRL listing its others lists it too."""
    with db.write():
        _insert(db, cert)


def device_certs(db: Sql, device_id: str) -> list[IssuedCert]:
    rows = db.execute(
        "SELECT * FROM device_certs WHERE device_id = ? ORDER BY issued_at", (device_id,)
    ).fetchall()
    return [IssuedCert.from_row(r) for r in rows]


# A certificate that expired this long ago leaves the CRL (RFC 5280 5.1.2.6 allows it once
# it expires): every broker refuses it for its date already, unless its clock is over a
# month behind. Without this the list only grows, by every certificate a revoked device
# was ever issued, for the CA's whole life.
EXPIRED_LISTED_S = 30 * 86400.0


def revoked_certs(db: Sql, now: float) -> list[RevokedCert]:
    """Every certificate issued to a revoked device and not long expired, for the CRL."""
    rows = db.execute(
        """SELECT c.serial, d.revoked_at FROM device_certs c
           JOIN devices d ON d.device_id = c.device_id
           WHERE d.revoked_at IS NOT NULL AND c.not_after > ? ORDER BY c.serial""",
        (now - EXPIRED_LISTED_S,),
    ).fetchall()
    return [RevokedCert(r["serial"], r["revoked_at"]) for r in rows]


def held_certs(db: Sql, now: float) -> list[RevokedCert]:
    """Every certificate of every device held off at `now` (and not revoked), but those
    long expired."""
    rows = db.execute(
        """SELECT c.serial, d.held_at FROM device_certs c
           JOIN devices d ON d.device_id = c.device_id
           WHERE d.revoked_at IS NULL AND d.held_until > ? AND c.not_after > ?
           ORDER BY c.serial""",
        (now, now - EXPIRED_LISTED_S),
    ).fetchall()
    return [RevokedCert(r["serial"], r["held_at"], held=True) for r in rows]


def hold_device(db: Sql, device_id: str, now: float, until: float) -> bool:
    """Hold a device off from `now` until `until`; False if unknown or revoked."""
    with db.write():
        changed = db.execute(
            """UPDATE devices SET held_at = ?, held_until = ?, online = 0
               WHERE device_id = ? AND revoked_at IS NULL""",
            (now, until, device_id),
        ).rowcount
    return changed == 1


def holds(db: Sql, now: float) -> dict[str, float]:
    """Devices held off at `now`, with when their holds end."""
    rows = db.execute(
        """SELECT device_id, held_until FROM devices
           WHERE revoked_at IS NULL AND held_until > ?""",
        (now,),
    ).fetchall()
    return {r["device_id"]: r["held_until"] for r in rows}
