"""`outpost-agent selfcheck` on an enrolled device's folder: it passes on a sound one; a
store migrated by a newer agent and a damaged model fail it, each named; a store at an
older schema passes, saying what it would apply; and it never changes the folder."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from edge.identity import DevicePaths
from edge.inference.directory import ModelDirectory
from edge.store.recovery import open_store
from tests.conftest import Enroller
from tests.support import REPO, SHIPPED_MODELS


def selfcheck(paths: DevicePaths) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "selfcheck", "--data", str(paths.root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def store_sql(paths: DevicePaths, statement: str) -> None:
    with contextlib.closing(sqlite3.connect(paths.store)) as db, db:
        db.execute(statement)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def device(enroll_device: Enroller) -> DevicePaths:
    paths, _ = await enroll_device()
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    opened = open_store(paths.store)  # as the agent makes it at its first start
    opened.db.conn.close()
    return paths


async def test_a_sound_folder_passes_and_is_left_as_it_was(enroll_device: Enroller) -> None:
    paths = await device(enroll_device)
    before = digest(paths.store)

    done = selfcheck(paths)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok   store: a copy migrates cleanly (already at this version's schema)" in done.stdout
    assert "ok   model vibration-anomaly 1.0.0: loads and gives its sample's answer" in done.stdout
    assert "selfcheck passed: 4 checks" in done.stdout
    assert digest(paths.store) == before


async def test_a_store_of_an_older_schema_would_be_migrated_on_the_copy_only(
    enroll_device: Enroller,
) -> None:
    paths = await device(enroll_device)
    store_sql(paths, "DELETE FROM _migrations WHERE name = '004_store_id'")
    store_sql(paths, "DELETE FROM meta WHERE key = 'store_id'")

    done = selfcheck(paths)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "would apply 004_store_id" in done.stdout
    again = selfcheck(paths)  # the original was not migrated
    assert "would apply 004_store_id" in again.stdout


async def test_a_store_of_a_newer_agent_and_a_damaged_model_fail_it(
    enroll_device: Enroller,
) -> None:
    paths = await device(enroll_device)
    store_sql(paths, "INSERT INTO _migrations (name, applied_at) VALUES ('099_future', 0)")
    model = next(paths.models.glob("vibration-anomaly/*/model.tflite"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    done = selfcheck(paths)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL store: migrated by a newer agent (099_future)" in done.stdout
    assert "FAIL model vibration-anomaly 1.0.0:" in done.stdout
    assert "ok   model surface-defect 1.0.0" in done.stdout
    assert "selfcheck FAILED: 2 of 4 checks" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_a_folder_that_is_not_an_agent_s_is_refused(tmp_path: Path) -> None:
    done = selfcheck(DevicePaths(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "does not exist: check --data" in done.stderr
