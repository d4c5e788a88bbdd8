"""Agent releases in the registry: each version's manifest and the hub's signature, and,
with replicas on PostgreSQL, its files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hub.store.sql import Sql


@dataclass(frozen=True)
class StoredAgentRelease:
    version: str
    manifest: str  # JSON, as in the release folder
    document: bytes  # the signed bytes (outpost/agentrelease.py `sign`)
    signature: bytes
    uploaded_at: float
    uploaded_by: str


def add(db: Sql, release: StoredAgentRelease, files: Sequence[tuple[str, bytes]] = ()) -> bool:
    """Record a release with its files (name, content), which replicas keep here; False
    if that version is there already, and then nothing is written.

    The version's file rows are replaced in the same transaction: rows left by an upload
    cut short before its release row (a rebuilt wheel has other bytes) must never be
    served under the manifest this release signs.
    """
    with db.write():
        if db.execute(
            "SELECT 1 FROM agent_releases WHERE version = ?", (release.version,)
        ).fetchone():
            return False
        db.execute("DELETE FROM agent_release_files WHERE version = ?", (release.version,))
        db.executemany(
            "INSERT INTO agent_release_files (version, name, content) VALUES (?, ?, ?)",
            [(release.version, name, content) for name, content in files],
        )
        db.execute(
            "INSERT INTO agent_releases (version, manifest, document, signature, uploaded_at,"
            " uploaded_by) VALUES (?, ?, ?, ?, ?, ?)",
            (release.version, release.manifest, release.document, release.signature,
             release.uploaded_at, release.uploaded_by),
        )  # fmt: skip
    return True


def all_releases(db: Sql) -> list[StoredAgentRelease]:
    rows = db.execute(
        "SELECT version, manifest, document, signature, uploaded_at, uploaded_by"
        " FROM agent_releases ORDER BY uploaded_at"
    ).fetchall()
    return [StoredAgentRelease(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4], r[5]) for r in rows]


def put_file(db: Sql, version: str, name: str, content: bytes) -> None:
    """Keep a release's file alone (migration 021), if no row has it yet: what an upload
    cut short before its release row leaves, for tests. An upload writes its files with
    its release row (`add`)."""
    with db.write():
        db.execute(
            "INSERT INTO agent_release_files (version, name, content) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (version, name, content),
        )


def get_file(db: Sql, version: str, name: str) -> bytes | None:
    row = db.execute(
        "SELECT content FROM agent_release_files WHERE version = ? AND name = ?", (version, name)
    ).fetchone()
    return bytes(row[0]) if row is not None else None
