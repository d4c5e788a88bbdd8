"""The store's counters (evictions, roll-ups, refusals, losses, wear): added to in the
transaction whose change they count."""

from __future__ import annotations

from outpost.sqlite import Database


def bump(db: Database, name: str, by: int = 1) -> None:
    db.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        (name, by),
    )
