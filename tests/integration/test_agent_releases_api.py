"""`GET /api/v1/agent-releases`: the releases a running hub took, for viewers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hub.app import Hub
from tests.api_client import ApiClient
from tests.support import REPO


async def test_a_release_taken_beside_the_running_hub_is_listed(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    viewer = await api.token("viewer")
    empty = await api.call("GET", "/api/v1/agent-releases", token=viewer)
    assert empty.status == 200, empty.body
    assert empty.body == {"items": []}
    assert (await api.call("GET", "/api/v1/agent-releases")).status == 401

    out = tmp_path / "release"
    for argv in (
        ["-m", "scripts.build_agent_release", "--out", str(out), "--no-dependencies",
         "--platform", "x86_64", "--version", "0.5.0"],
        ["-m", "hub.cli", "agent-releases", "upload", "--data", str(hub.paths.root), str(out)],
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=300,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    listed = await api.call("GET", "/api/v1/agent-releases", token=viewer)
    (item,) = listed.body["items"]
    assert (item["version"], item["platforms"], item["files"]) == ("0.5.0", ["x86_64"], 1)
    assert item["size"] > 0
    assert item["uploaded_by"].startswith("cli:")
