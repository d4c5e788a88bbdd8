"""The model catalog: each model version uploaded to the hub, with its signed release
document, immutable once stored. Their files live in the models folder, or in the
database for replicas (modelfiles.py); roll-outs release them to devices (rollouts.py).

Each function runs on the store's worker thread as one unit of work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hub.store.sql import Row, Sql


@dataclass(frozen=True)
class StoredModel:
    """An uploaded model version, with its signed release document."""

    name: str
    version: str
    sha256: str
    size: int
    manifest: dict[str, object]
    document: bytes
    signature: bytes
    uploaded_at: float
    uploaded_by: str

    @classmethod
    def from_row(cls, row: Row) -> StoredModel:
        return cls(
            row["name"],
            row["version"],
            row["sha256"],
            row["size"],
            json.loads(row["manifest"]),
            row["document"],
            row["signature"],
            row["uploaded_at"],
            row["uploaded_by"],
        )


def add_model(db: Sql, m: StoredModel) -> bool:
    """Store a model; False if that name and version exist (a version is immutable)."""
    with db.write():
        return insert_model(db, m)


def insert_model(db: Sql, m: StoredModel) -> bool:
    """`add_model` inside a transaction the caller holds (modelfiles.py adds the file)."""
    added = db.execute(
        """INSERT INTO models (name, version, sha256, size, manifest, document,
               signature, uploaded_at, uploaded_by)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
        (
            m.name,
            m.version,
            m.sha256,
            m.size,
            json.dumps(m.manifest, sort_keys=True),
            m.document,
            m.signature,
            m.uploaded_at,
            m.uploaded_by,
        ),
    ).rowcount
    return added == 1


def get_model(db: Sql, name: str, version: str) -> StoredModel | None:
    row = db.execute(
        "SELECT * FROM models WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    return StoredModel.from_row(row) if row else None


def list_models(db: Sql) -> list[StoredModel]:
    rows = db.execute("SELECT * FROM models ORDER BY name, uploaded_at").fetchall()
    return [StoredModel.from_row(r) for r in rows]
