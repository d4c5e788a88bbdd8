"""Who leads the replicas: one row, a lease on it, and an epoch that fences.

The replica holding an unexpired lease is the leader; it renews it well before it
lapses. Taking over a lapsed lease adds one to the epoch, and the leader's singleton
units of work (allocation passes, the liveness sweep, holds) begin by checking, in their
own transaction, that the lease is still theirs at that epoch (`check_fence`). A leader
that was paused (a long GC, a frozen VM) and wakes after another took over therefore
cannot act: its check fails, or, if the takeover commits while its unit runs, the
SERIALIZABLE transaction that read the old lease is the one PostgreSQL aborts.

Time is the database's clock, so replicas whose clocks disagree still agree on expiry.
"""

from __future__ import annotations

from dataclasses import dataclass

from hub.store.sql import Sql

LEASE = "hub"


class NotLeaderError(RuntimeError):
    """A singleton unit of work ran on a replica that no longer holds the lease."""


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int
    remaining_s: float


# A claim takes milliseconds. A replica frozen inside one (after its UPDATE, before its
# commit: a stalled VM, SIGSTOP) holds the row's lock, and PostgreSQL would keep its
# transaction open for ever: the others could never take over. Its session is ended once
# idle this long in the claim, and no claim waits longer than this for the lock.
CLAIM_STALL_S = 2


def claim(db: Sql, holder: str, ttl_s: float) -> Lease | None:
    """Renew the lease if `holder` has it, take it over if it lapsed; else None."""
    if db.dialect == "postgresql":
        db.execute(f"SET LOCAL idle_in_transaction_session_timeout = '{CLAIM_STALL_S}s'")
        db.execute(f"SET LOCAL lock_timeout = '{CLAIM_STALL_S}s'")
    now = db.clock()
    row = db.execute(
        f"SELECT holder, epoch, expires_at - {now} AS remaining FROM leadership WHERE name = ?",  # noqa: S608 - the clock is an expression of ours
        (LEASE,),
    ).fetchone()
    if row is None:  # seeded by the migration; only a hand-edited database lacks it
        db.execute(
            "INSERT INTO leadership (name, holder, epoch, expires_at) VALUES (?, '', 0, 0)",
            (LEASE,),
        )
        return claim(db, holder, ttl_s)
    epoch = int(row["epoch"])
    if row["holder"] == holder and row["remaining"] > 0:
        db.execute(
            f"UPDATE leadership SET expires_at = {now} + ? WHERE name = ?",  # noqa: S608
            (ttl_s, LEASE),
        )
        return Lease(holder, epoch, ttl_s)
    if row["remaining"] > 0:
        return None  # another replica leads
    db.execute(
        f"UPDATE leadership SET holder = ?, epoch = ?, expires_at = {now} + ? WHERE name = ?",  # noqa: S608
        (holder, epoch + 1, ttl_s, LEASE),
    )
    return Lease(holder, epoch + 1, ttl_s)


def release(db: Sql, holder: str, epoch: int) -> None:
    """Give the lease up at once (a clean shutdown): the next replica need not wait."""
    db.execute(
        "UPDATE leadership SET expires_at = 0 WHERE name = ? AND holder = ? AND epoch = ?",
        (LEASE, holder, epoch),
    )


def current(db: Sql) -> Lease | None:
    now = db.clock()
    row = db.execute(
        f"SELECT holder, epoch, expires_at - {now} AS remaining FROM leadership WHERE name = ?",  # noqa: S608
        (LEASE,),
    ).fetchone()
    if row is None or row["remaining"] <= 0:
        return None
    return Lease(row["holder"], int(row["epoch"]), float(row["remaining"]))


def check_fence(db: Sql, holder: str, epoch: int) -> None:
    """Raise `NotLeaderError` unless `holder` holds the unexpired lease at `epoch`."""
    now = db.clock()
    row = db.execute(
        f"""SELECT 1 FROM leadership WHERE name = ? AND holder = ? AND epoch = ?
            AND expires_at > {now}""",  # noqa: S608
        (LEASE, holder, epoch),
    ).fetchone()
    if row is None:
        raise NotLeaderError(f"{holder} no longer leads (epoch {epoch})")
