"""Model files in the database, for replicas: an upload lands on one replica's disk, and a
device may download it from any other (hub/models/releases.py copies it to a local cache). A
single hub on SQLite keeps its files on disk only and leaves the table empty."""

from __future__ import annotations

from hub.store.sql import Sql


def put_model_file(db: Sql, name: str, version: str, content: bytes) -> None:
    """Keep a model's file in the database (replicas share it; see migration 014)."""
    with db.write():
        db.execute(
            "INSERT INTO model_files (name, version, content) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (name, version, content),
        )


def get_model_file(db: Sql, name: str, version: str) -> bytes | None:
    row = db.execute(
        "SELECT content FROM model_files WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    return bytes(row[0]) if row is not None else None
