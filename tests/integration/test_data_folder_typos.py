"""A data folder that is not one (a typo) is refused by name, with exit 2 and no
traceback, and is not created: only `init` (hub) and `enroll` (agent) make one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.identity import DevicePaths, Identity
from hub.paths import HubPaths
from tests.support import REPO

SHIPPED_MODEL = REPO / "models" / "vibration-anomaly" / "1.0.0"

HUB_COMMANDS = [
    ["run"],
    ["enroll-token"],
    ["token", "create", "--role", "viewer"],
    ["token", "list"],
    ["token", "revoke", "abc"],
    ["devices"],
    ["device", "revoke", "dev-0123456789ab"],
]
AGENT_COMMANDS = [
    ["run"],
    ["renew"],
    ["models", "install", str(SHIPPED_MODEL)],
    ["models", "list"],
]


def _run(module: str, args: list[str], data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args, "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("args", HUB_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_hub_commands_refuse_a_folder_that_is_not_a_hubs(tmp_path: Path, args: list[str]) -> None:
    typo = tmp_path / "hub-dtaa"
    done = _run("hub.cli", args, typo)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"outpost-hub: error: {typo} does not exist: check --data, or run `outpost-hub init`"
    )
    assert not typo.exists()
    typo.mkdir()  # a folder that exists but was never initialised
    done = _run("hub.cli", args, typo)
    assert done.returncode == 2, done.stderr
    assert "is not a hub data folder: run `outpost-hub init`" in done.stderr
    assert list(typo.iterdir()) == []


def test_an_initialised_hub_folder_is_taken(hub_paths: HubPaths) -> None:
    done = _run("hub.cli", ["devices"], hub_paths.root)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("args", AGENT_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_agent_commands_refuse_a_folder_that_is_not_enrolled(
    tmp_path: Path, args: list[str]
) -> None:
    typo = tmp_path / "agent-dtaa"
    done = _run("edge.cli", args, typo)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert str(typo) in done.stderr
    assert "outpost-agent enroll" in done.stderr
    assert not typo.exists()


async def test_models_commands_take_an_enrolled_folder(enroll_device) -> None:
    paths, _ = await enroll_device()
    assert isinstance(paths, DevicePaths)
    assert Identity.load(paths)
    done = _run("edge.cli", ["models", "install", str(SHIPPED_MODEL)], paths.root)
    assert done.returncode == 0, done.stderr
    listed = _run("edge.cli", ["models", "list"], paths.root)
    assert listed.returncode == 0, listed.stderr
    assert "vibration-anomaly 1.0.0" in listed.stdout
    surface = REPO / "models" / "surface-defect" / "1.0.0"
    done = _run("edge.cli", ["models", "install", "--no-activate", str(surface)], paths.root)
    assert done.returncode == 0, done.stderr
    listed = _run("edge.cli", ["models", "list"], paths.root)
    assert "surface-defect none active (installed: 1.0.0)" in listed.stdout
    assert "vibration-anomaly 1.0.0" in listed.stdout
