"""The README's API examples run as shown, against a running hub."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from asyncio.subprocess import PIPE

from hub.app import Hub
from tests.conftest import Enroller
from tests.support import REPO

MARKER = "<!-- the block below is run by tests/integration/test_readme.py -->"


def _examples() -> str:
    readme = (REPO / "README.md").read_text()
    after = readme.split(MARKER, 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "curl" in block
    return block


async def test_readme_api_examples_run_as_shown(hub: Hub, enroll_device: Enroller) -> None:
    await enroll_device("raspberry-pi-4", labels={"site": "north"})
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "DATA": str(hub.paths.root),
        "HUB": hub.config.hub_url,
        "CA": str(hub.paths.ca_cert),
    }
    script = "set -euo pipefail\n" + _examples().replace("\ncurl ", "\necho; curl ")

    # The hub runs in this event loop: the script must not block it.
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", script, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    stdout = out.decode()

    assert process.returncode == 0, stdout + err.decode()
    outputs = [line for line in stdout.splitlines() if line.startswith("{")]
    replies = [json.loads(line) for line in outputs]
    assert len(replies) == _examples().count("\ncurl ") - 1  # all but /metrics answer JSON
    assert "# TYPE outpost_hub_devices gauge" in stdout
