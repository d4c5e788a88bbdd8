"""Agent releases (issue 22, first part): scripts/build-agent-release writes the outpost
wheel and its manifest; `outpost-hub agent-releases upload` takes a folder only when
every file matches the manifest, signs it with the hub's key (which devices trust), and
never replaces a version; a signed release verifies with that key and no other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hub.initialise import initialise
from hub.paths import HubPaths
from hub.store import HubStore
from hub.store import agentreleases as registry
from outpost import agentrelease
from outpost.agentrelease import ReleaseFileError
from outpost.signing import Signed
from tests.support import REPO


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One release of this checkout, the outpost wheel alone (no index needed)."""
    out = tmp_path_factory.mktemp("release") / "0"
    done = run("-m", "scripts.build_agent_release", "--out", out, "--no-dependencies",
               "--platform", "x86_64", "--platform", "aarch64")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "for aarch64, x86_64: 1 files" in done.stdout
    return out


def copy_of(built: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "release"
    shutil.copytree(built, folder)
    return folder


def upload(hub: HubPaths, folder: Path) -> subprocess.CompletedProcess[str]:
    return run("-m", "hub.cli", "agent-releases", "upload", "--data", hub.root, folder)


@pytest.fixture
def hub(tmp_path: Path) -> HubPaths:
    paths = HubPaths(tmp_path / "hub")
    initialise(paths, server_names=[])
    return paths


async def test_a_built_release_is_taken_signed_and_never_replaced(
    built: Path, hub: HubPaths, tmp_path: Path
) -> None:
    manifest = agentrelease.read_folder(built)
    (wheel,) = manifest.files
    assert wheel.name.startswith("outpost-")
    assert wheel.platform == agentrelease.ANY

    taken = upload(hub, built)
    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert f"agent release {manifest.version} taken and signed: 1 files" in taken.stdout
    assert (hub.agent_releases / manifest.version / wheel.name).read_bytes() == (
        built / "files" / wheel.name
    ).read_bytes()
    again = upload(hub, built)
    assert again.returncode == 2
    assert f"agent release {manifest.version} exists already" in again.stderr

    store = HubStore(hub.database)
    try:
        (stored,) = await store.run(registry.all_releases)
    finally:
        store.close()
    public = serialization.load_pem_public_key(hub.signing_pub.read_bytes())
    assert isinstance(public, ed25519.Ed25519PublicKey)
    signed = Signed(stored.document, stored.signature)
    verified, _ = agentrelease.verify(public, signed)
    assert verified == manifest
    with pytest.raises(ReleaseFileError, match="signature does not verify"):
        agentrelease.verify(ed25519.Ed25519PrivateKey.generate().public_key(), signed)
    listed = run("-m", "hub.cli", "agent-releases", "list", "--data", hub.root)
    assert manifest.version in listed.stdout
    assert "aarch64,x86_64" in listed.stdout


def test_a_build_may_update_every_agent_that_updates_itself_unless_told(
    built: Path, tmp_path: Path
) -> None:
    """By default an agent from the first self-updating version on may take the release:
    not only agents of the release's own version, which it could never update."""
    assert agentrelease.read_folder(built).min_agent_version == agentrelease.FIRST_SELF_UPDATING
    newer = run("-m", "scripts.build_agent_release", "--out", tmp_path / "r", "--version",
                "2.0.0", "--min-agent-version", "3.0.0", "--no-dependencies")  # fmt: skip
    assert newer.returncode == 2
    assert "--min-agent-version 3.0.0 is newer than the release (2.0.0)" in newer.stderr
    assert not (tmp_path / "r").exists()


def test_a_version_an_upload_cut_short_left_can_be_uploaded_again(
    built: Path, hub: HubPaths
) -> None:
    """The upload was killed after it claimed the version's folder, before its row: the
    version was neither listed nor uploadable. A folder left that way is taken back once
    no upload can be filling it."""
    manifest = agentrelease.read_folder(built)
    left = hub.agent_releases / manifest.version
    left.mkdir(parents=True)
    (left / "half.whl").write_bytes(b"half")

    recent = upload(hub, built)
    assert recent.returncode == 2
    assert "is being uploaded" in recent.stderr  # the control: it may be under way
    long_ago = time.time() - 3600
    os.utime(left, (long_ago, long_ago))

    taken = upload(hub, built)

    assert taken.returncode == 0, taken.stdout + taken.stderr
    assert sorted(p.name for p in left.iterdir()) == [f.name for f in manifest.files]


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        ("tamper", "does not match the manifest"),
        ("extra", "files the manifest does not name: ['stray.whl']"),
        ("missing", "cannot read"),
        ("platform", "unknown platforms ['sparc']"),
        ("no-manifest", "no manifest.json"),
        ("newer-hub", "needs a hub from 9.0.0 on to roll it out; this hub is"),
    ],
)
def test_a_spoilt_release_folder_is_refused_and_nothing_is_kept(
    built: Path, hub: HubPaths, tmp_path: Path, spoil: str, said: str
) -> None:
    folder = copy_of(built, tmp_path)
    (wheel,) = (folder / "files").iterdir()
    if spoil == "tamper":
        data = bytearray(wheel.read_bytes())
        data[100] ^= 0xFF
        wheel.write_bytes(bytes(data))
    elif spoil == "extra":
        (folder / "files" / "stray.whl").write_bytes(b"x")
    elif spoil == "missing":
        wheel.unlink()
    elif spoil == "platform":
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["platforms"] = ["sparc"]
        (folder / "manifest.json").write_text(json.dumps(manifest))
    elif spoil == "newer-hub":
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["min_hub_version"] = "9.0.0"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    else:
        (folder / "manifest.json").unlink()

    refused = upload(hub, folder)

    assert refused.returncode == 2, refused.stdout
    assert said in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not hub.agent_releases.exists() or not any(hub.agent_releases.iterdir())
    taken = upload(hub, built)  # the same probe, unspoilt, is taken
    assert taken.returncode == 0, taken.stderr


def test_a_manifest_for_one_platform_names_what_a_device_installs() -> None:
    manifest = msgspec.convert(
        {
            "version": "1.2.0",
            "python": "3.11",
            "platforms": ["x86_64", "aarch64"],
            "files": [
                {"name": "outpost-1.2.0-py3-none-any.whl", "sha256": "a" * 64, "size": 1,
                 "platform": "any"},
                {"name": "numpy-2-x86_64.whl", "sha256": "b" * 64, "size": 1,
                 "platform": "x86_64"},
                {"name": "numpy-2-aarch64.whl", "sha256": "c" * 64, "size": 1,
                 "platform": "aarch64"},
            ],
            "min_hub_version": "1.0.0",
            "min_agent_version": "1.1.0",
        },
        agentrelease.AgentManifest,
    )  # fmt: skip
    assert [f.name for f in manifest.for_platform("aarch64")] == [
        "outpost-1.2.0-py3-none-any.whl",
        "numpy-2-aarch64.whl",
    ]
    agentrelease.check_manifest(manifest)
    wrong = msgspec.structs.replace(
        manifest, files=[msgspec.structs.replace(manifest.files[1], platform="armv7l")]
    )
    with pytest.raises(ReleaseFileError, match="is for armv7l, not one of its platforms"):
        agentrelease.check_manifest(wrong)
