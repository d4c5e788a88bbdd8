"""The demo's courier (`--courier`): a site with no link at all, whose data reaches the
hub only by bundle files that the demo carries, as a person with a USB stick would:
`outpost-agent bundle export` at the site, `outpost-hub bundle import` at the hub (which
writes an ack bundle), and `outpost-agent bundle import` of that ack back at the site."""

from __future__ import annotations

from pathlib import Path

from scripts.demo_parts.plan import BIN, COURIER_EVERY_S
from scripts.demo_parts.processes import run, step


class Courier:
    def __init__(self, data: Path, hub_dir: Path, agent_dir: Path, name: str) -> None:
        self._stick = data / "courier"
        self._hub_dir = hub_dir
        self._agent_dir = agent_dir
        self.name = name
        self.trips = 0
        self.carried = 0  # records the hub took from the bundles
        self._next_at = COURIER_EVERY_S

    def due(self, elapsed: float) -> bool:
        return elapsed >= self._next_at

    def trip(self, elapsed: float = 0.0) -> str:
        """One round trip of the stick; the line that says what it carried."""
        self.trips += 1
        self._next_at = elapsed + COURIER_EVERY_S
        to_hub = self._stick / f"trip-{self.trips}" / "to-hub"
        to_site = self._stick / f"trip-{self.trips}" / "to-site"
        run(str(BIN / "outpost-agent"), "bundle", "export", "--data", str(self._agent_dir),
            "--to", str(to_hub), "--max-size", "1M")  # fmt: skip
        parts = len(list(to_hub.glob("*.opb")))
        imported = run(str(BIN / "outpost-hub"), "bundle", "import", "--data", str(self._hub_dir),
                       str(to_hub), "--ack-out", str(to_site))  # fmt: skip
        # "NAME.opb: imported: DEVICE: N new records; ..."
        summary = imported.splitlines()[0].split("imported: ", 1)[1].split(": ", 1)[1]
        self.carried += int(summary.split(" new records", 1)[0].replace(",", ""))
        run(str(BIN / "outpost-agent"), "bundle", "import", "--data", str(self._agent_dir),
            str(to_site))  # fmt: skip
        return (
            f"courier trip {self.trips} to {self.name} (no link at all): {parts} bundle "
            f"part(s) carried to the hub, which took {summary}; its ack carried back, and "
            "the site deleted what the hub holds"
        )

    def line(self) -> str:
        return (
            f"courier: {self.trips} trips to {self.name}, {self.carried:,} records carried "
            f"by bundle (files in {self._stick})"
        )

    def final_trip(self) -> None:
        step(self.trip())
