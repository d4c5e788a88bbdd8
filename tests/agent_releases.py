"""Agent releases in tests: built from this checkout, uploaded over the hub's API."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from hub.app import Hub
from outpost import agentrelease
from tests.api_client import Reply
from tests.support import REPO


def build(out: Path, version: str, platform: str, *, dependencies: bool = True) -> Path:
    """scripts/build_agent_release.py into `out`; `out`."""
    done = subprocess.run(
        [sys.executable, "-m", "scripts.build_agent_release", "--out", str(out),
         "--platform", platform, "--version", version,
         *([] if dependencies else ["--no-dependencies"])],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


async def upload(hub: Hub, token: str, folder: Path) -> Reply:
    """POST /api/v1/agent-releases: the manifest and every file of a release folder."""
    form = aiohttp.FormData()
    form.add_field("manifest", (folder / agentrelease.MANIFEST).read_bytes(), filename="m.json")
    for path in sorted((folder / agentrelease.FILES).iterdir()):
        form.add_field("file", path.read_bytes(), filename=path.name)
    context = ssl.create_default_context(cafile=str(hub.paths.ca_cert))
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            hub.config.hub_url + "/api/v1/agent-releases",
            data=form,
            headers={"Authorization": f"Bearer {token}"},
            ssl=context,
        ) as response,
    ):
        body: Any = await response.json()
        return Reply(response.status, body, dict(response.headers))
