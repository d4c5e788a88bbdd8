"""The staging folders of model installs: the one a killed install left goes at the next
install or start, the one an install still copies into stays (a real second process,
as `outpost-agent models install` beside the agent)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import cast

from edge.inference.directory import ModelDirectory
from edge.inference.reporting import Reporting
from edge.inference.service import InferenceService
from edge.store import AgentStore
from tests.support import SHIPPED_MODELS
from tests.unit.test_deploy_directory import version_of

SOURCE = SHIPPED_MODELS[0]
REPO = Path(__file__).resolve().parents[2]


def installer(root: Path, then: str, source: Path = SOURCE) -> str:
    """A child that installs `source` and, its model file copied, runs `then` (mid-install)."""
    return textwrap.dedent(
        f"""
        import os, shutil, sys
        from pathlib import Path
        from edge.inference.directory import ModelDirectory
        real = shutil.copyfile
        def copying(src, dst, *a, **k):
            real(src, dst, *a, **k)
            if str(dst).endswith("model.tflite"):
                {then}
            return dst
        shutil.copyfile = copying
        ModelDirectory(Path({str(root)!r})).install(Path({str(source)!r}))
        """
    )


def staged(root: Path) -> list[str]:
    return sorted(p.name for home in root.iterdir() for p in home.glob(".*.partial"))


def killed_mid_copy(root: Path, source: Path = SOURCE) -> list[str]:
    """Install in a child killed once the model file is copied; the staging it left."""
    script = installer(root, "os._exit(9)", source)
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO)
    assert done.returncode == 9
    left = staged(root)
    assert len(left) == 1  # the model-sized copy
    return left


def test_a_staging_folder_a_killed_install_left_goes_at_the_next_install(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    killed_mid_copy(root)

    bundle = ModelDirectory(root).install(SOURCE)

    assert staged(root) == []
    assert ModelDirectory(root).active(bundle.manifest.name) == bundle.manifest.version


def test_a_staging_folder_a_killed_install_left_goes_at_the_next_start(tmp_path: Path) -> None:
    root = tmp_path / "models"
    ModelDirectory(root).install(SOURCE)  # serving; the next version's install is killed
    killed_mid_copy(root, version_of(tmp_path, "1.0.1"))

    async def start() -> None:
        store = cast(AgentStore, None)  # not used: no request is served
        service = InferenceService(ModelDirectory(root), store, reporting=Reporting("none"))
        await service.start()
        await service.close()

    asyncio.run(start())
    assert staged(root) == []


def test_a_removal_a_crash_left_goes_at_the_next_install(tmp_path: Path) -> None:
    root = tmp_path / "models"
    name = ModelDirectory(root).install(SOURCE).manifest.name
    doomed = root / name / ".0.9.removing"
    doomed.mkdir()
    (doomed / "model.tflite").write_bytes(b"x" * 1000)

    ModelDirectory(root).install(SOURCE)

    assert not doomed.exists()


def test_an_install_under_way_in_another_process_keeps_its_staging(tmp_path: Path) -> None:
    """The agent's start or install beside `outpost-agent models install` (which does not
    take the data folder's lock): the other's copy is not taken from under it."""
    root = tmp_path / "models"
    ready = tmp_path / "ready"
    then = f"Path({str(ready)!r}).touch(); sys.stdin.read()"  # copied; waits to be let go
    child = subprocess.Popen(
        [sys.executable, "-c", installer(root, then)], stdin=subprocess.PIPE, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None, "the install ended before it copied"
            assert time.monotonic() < deadline, "the install did not copy its model file"
            time.sleep(0.01)  # polling the child, not synchronising on time
        held = staged(root)
        assert len(held) == 1

        directory = ModelDirectory(root)
        assert directory.sweep() == []
        bundle = directory.install(SOURCE)  # sweeps too, and installs beside it
        assert staged(root) == held
    finally:
        assert child.stdin is not None
        child.stdin.close()
        returncode = child.wait(timeout=60)
    assert returncode == 0  # it finished its own install
    assert staged(root) == []
    assert directory.versions(bundle.manifest.name) == [bundle.manifest.version]
