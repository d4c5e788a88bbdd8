"""docs/sinks.md names every device event type the hub publishes (hub/store/events.py
declares them): an integrator reads the table, not the code."""

from __future__ import annotations

from pathlib import Path

from hub.store.events import PUBLISHED_AS

DOC = Path(__file__).resolve().parents[2] / "docs" / "sinks.md"


def test_every_published_device_event_is_in_the_table() -> None:
    table = [line for line in DOC.read_text().splitlines() if line.startswith("| `")]
    named = {part.strip("` ") for line in table for part in line.split("|")[1].split(",")}
    missing = sorted(set(PUBLISHED_AS.values()) - named)
    assert not missing, f"docs/sinks.md lacks {missing}"
