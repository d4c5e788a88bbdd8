"""`outpost-agent selfcheck` on an enrolled device's folder: it passes on a sound one; a
store migrated by a newer agent, a damaged model, and a damaged identity, device key,
certificate or profile (each of which stops `run`) fail it, each named; a store at an
older schema passes, saying what it would apply; and it never changes the folder."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

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
    assert "ok   identity: " in done.stdout
    assert "ok   certificate: a TLS client context loads" in done.stdout
    assert "selfcheck passed: 8 checks" in done.stdout
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
    assert "selfcheck FAILED: 2 of 8 checks" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def another_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# What is done to a sound folder; the FAIL lines it must give, each as its start and
# the file it names.
DAMAGES: dict[str, tuple[Callable[[DevicePaths], object], list[tuple[str, str]]]] = {
    "identity": (
        lambda p: p.identity.write_text('{"device_id": "dev-1"'),
        [("FAIL identity: {p.identity} is damaged", "identity.json")],
    ),
    "identity-not-a-map": (
        lambda p: p.identity.write_text("[]"),
        [("FAIL identity: {p.identity} is damaged (not the map", "identity.json")],
    ),
    "device-key": (
        lambda p: p.key.write_bytes(p.key.read_bytes()[:40]),
        [("FAIL device key: {p.key}: ", "device.key"), ("FAIL certificate: ", "device.key")],
    ),
    "key-of-another-certificate": (
        lambda p: p.key.write_bytes(another_key()),
        [("FAIL certificate: ", "device.key")],
    ),
    "certificate": (
        lambda p: p.cert.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n"),
        [("FAIL certificate: ", "device.crt")],
    ),
    "profile": (
        lambda p: p.profile.write_text("[profile\nname = "),
        [("FAIL profile: {p.profile}: not valid TOML", "profile.toml")],
    ),
}


@pytest.mark.parametrize("damage", DAMAGES)
async def test_a_file_run_cannot_load_fails_it_by_name(
    enroll_device: Enroller, damage: str
) -> None:
    paths, _ = await enroll_device()
    spoil, expected = DAMAGES[damage]
    spoil(paths)

    done = selfcheck(paths)

    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == len(expected), done.stdout
    for line, (start, file) in zip(failed, expected, strict=True):
        assert line.startswith(start.format(p=paths)), line
        assert str(paths.root / "identity" / file) in line or str(paths.root / file) in line
    assert f"selfcheck FAILED: {len(expected)} of 7 checks" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_a_folder_that_is_not_an_agent_s_is_refused(tmp_path: Path) -> None:
    done = selfcheck(DevicePaths(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "does not exist: check --data" in done.stderr
