"""The hub's HTTPS API, read and driven the way an operator would."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


class HubApi:
    """The demo reads the fleet the way an operator would: the hub's HTTPS API."""

    def __init__(self, url: str, ca: Path, token: str) -> None:
        self.url = url
        self.ca = ca
        self.context = ssl.create_default_context(cafile=str(ca))
        self._headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str, url: str = "") -> bytes:
        """GET `path` from the hub (or from another replica's `url`)."""
        request = urllib.request.Request((url or self.url) + path, headers=self._headers)  # noqa: S310 - our own https URL
        with urllib.request.urlopen(request, context=self.context, timeout=5) as response:  # noqa: S310
            body: bytes = response.read()
            return body

    def put(self, path: str, body: dict[str, Any], token: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own https URL
            self.url + path,
            data=json.dumps(body).encode(),
            method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=5):  # noqa: S310
            pass

    def refusal(self, path: str, body: dict[str, Any], token: str) -> str:
        """PUT `body` that the hub should refuse; return the error message it answers."""
        try:
            self.put(path, body, token)
        except urllib.error.HTTPError as exc:
            error: dict[str, Any] = json.loads(exc.read())["error"]
            return f"{exc.code} {error['message']}"
        raise RuntimeError(f"the hub took a body it should have refused: PUT {path}")

    def post(self, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own https URL
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.context, timeout=5) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def devices(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.get("/api/v1/devices"))["items"]
        return items

    def held(self, device_id: str) -> str:
        """Results the hub holds for a device ("-" if it cannot say)."""
        try:
            streams = json.loads(self.get(f"/api/v1/devices/{device_id}/streams"))
        except (OSError, ValueError):
            return "-"
        for item in streams.get("items", streams if isinstance(streams, list) else []):
            if item.get("stream") == "results":
                return str(item.get("records", "-"))
        return "0"

    def sink(self, name: str) -> dict[str, Any] | None:
        """A sink's state as GET /api/v1/sinks says (None if the hub cannot say)."""
        try:
            sinks = json.loads(self.get("/api/v1/sinks"))["items"]
        except (OSError, ValueError):
            return None
        found: dict[str, Any] | None = next((s for s in sinks if s["name"] == name), None)
        return found

    def task_states(self) -> dict[str, int]:
        """Tasks by state, from the hub's /metrics."""
        states: dict[str, int] = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            if family.name == "outpost_hub_tasks":
                states = {s.labels["state"]: int(s.value) for s in family.samples}
        return states

    def message_counts(self) -> tuple[int, int, int]:
        """Device messages the hub accepted, refused as a gap (the agent resends from the
        hub's mark) and rejected otherwise, from its /metrics."""
        accepted = gaps = rejected = 0
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            if family.name != "outpost_hub_messages":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    outcome = sample.labels["outcome"]
                    if outcome == "accepted":
                        accepted += int(sample.value)
                    elif outcome == "gap":
                        gaps += int(sample.value)
                    else:
                        rejected += int(sample.value)
        return accepted, gaps, rejected
