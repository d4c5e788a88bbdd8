"""Model files in the database, for replicas: an upload lands on one replica's disk, and a
device may download it from any other (hub/models/releases.py copies it to a local cache). A
single hub on SQLite keeps its files on disk only and leaves the table empty."""

from __future__ import annotations

from hub.store import catalog
from hub.store.catalog import StoredModel
from hub.store.sql import Sql


def add_model_with_file(db: Sql, model: StoredModel, content: bytes) -> bool:
    """Store a model and its file in one transaction; False if that name and version
    exist, and then nothing is written.

    A file row already there (left by an older hub, whose upload lost the version to
    another replica or was cut short before its catalogue row) is replaced, never kept:
    the bytes a replica caches are always the ones the signed release names.
    """
    with db.write():
        if not catalog.insert_model(db, model):
            return False
        db.execute(
            "INSERT INTO model_files (name, version, content) VALUES (?, ?, ?)"
            " ON CONFLICT (name, version) DO UPDATE SET content = excluded.content",
            (model.name, model.version, content),
        )
    return True


def get_model_file(db: Sql, name: str, version: str) -> bytes | None:
    row = db.execute(
        "SELECT content FROM model_files WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    return bytes(row[0]) if row is not None else None
