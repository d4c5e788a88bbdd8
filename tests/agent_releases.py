"""Agent releases in tests: built from this checkout, uploaded over the hub's API.

A whole release (the outpost wheel and every dependency wheel) takes seconds to build:
a test run builds one, once, shared by every xdist worker (`of_this_checkout`), and
each test that needs a release takes a copy renumbered to its own version. A renumbered
release is what the build script makes with `--version`: the same files, the outpost
wheel's version (`outpost.__version__`, its metadata and names) changed. The script
itself is tested as the user runs it in test_agent_releases.py.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import platform
import shutil
import ssl
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from outpost import agentrelease
from scripts.build_agent_release import file_entry
from tests.api_client import Reply
from tests.support import REPO

MACHINE = platform.machine()
# The shared build's version: one no other text in the outpost wheel holds.
BASE = "0.1.0.9999"
# Rewrites an outpost wheel's member (name, bytes) -> bytes: how a test breaks a build.
Patch = Callable[[str, bytes], bytes]


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


def of_this_checkout(
    factory: pytest.TempPathFactory,
    out: Path,
    version: str,
    platforms: tuple[str, ...] = (MACHINE,),
    *,
    dependencies: bool = True,
) -> Path:
    """A release of this checkout as `version` in `out` (for `platforms`: the shared
    build's wheels are this machine's, so with dependencies only this machine); `out`."""
    assert not dependencies or platforms == (MACHINE,), "dependency wheels are this machine's"
    return renumbered(_shared(factory), out, version, platforms, dependencies=dependencies)


def _shared(factory: pytest.TempPathFactory) -> Path:
    """The run's one whole build, made by whichever worker asks first (under a lock in
    the folder the workers' temporary folders share)."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    base = root / f"agent-release-{BASE}"
    with (root / f"{base.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (base / agentrelease.MANIFEST).exists():  # written last: a whole build
            shutil.rmtree(base, ignore_errors=True)
            build(base, BASE, MACHINE)
    return base


def renumbered(
    source: Path,
    out: Path,
    version: str,
    platforms: tuple[str, ...] | None = None,
    *,
    dependencies: bool = True,
    patch: Patch | None = None,
) -> Path:
    """The release in `source` as `version` in `out`: its dependency wheels copied (or
    none), its outpost wheel rewritten (and `patch`ed); `out`."""
    manifest = agentrelease.read_folder(source)
    (out / agentrelease.FILES).mkdir(parents=True)
    entries = []
    for entry in manifest.files:
        path = source / agentrelease.FILES / entry.name
        if entry.name.startswith("outpost-"):
            target = out / agentrelease.FILES / entry.name.replace(manifest.version, version)
            _rewrite_wheel(path, target, manifest.version, version, patch)
            entries.append(file_entry(target, entry.platform))
        elif dependencies:
            shutil.copyfile(path, out / agentrelease.FILES / entry.name)  # a test may spoil its own
            entries.append(entry)
    agentrelease.write_manifest(
        out,
        agentrelease.AgentManifest(
            version=version,
            python=manifest.python,
            platforms=sorted(platforms or manifest.platforms),
            files=sorted(entries, key=lambda e: (e.name, e.platform)),
            min_hub_version=manifest.min_hub_version,
            min_agent_version=manifest.min_agent_version,
        ),
    )
    return out


def _rewrite_wheel(source: Path, target: Path, old: str, new: str, patch: Patch | None) -> None:
    """`source` with `new` for `old` in its version's places, and a RECORD to match."""
    record: list[str] = []
    record_name = ""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            name = item.filename.replace(f"outpost-{old}.dist-info", f"outpost-{new}.dist-info")
            data = src.read(item)
            if item.filename == "outpost/__init__.py":
                data = _replace_once(data, f'__version__ = "{old}"', f'__version__ = "{new}"')
            elif ".dist-info/" in item.filename:
                data = data.replace(old.encode(), new.encode())
            if patch is not None:
                data = patch(item.filename, data)
            if name.endswith(".dist-info/RECORD"):
                record_name = name
                continue
            dst.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        assert record_name, f"{source.name} has no RECORD"
        dst.writestr(record_name, "\n".join([*record, f"{record_name},,", ""]))


def _replace_once(data: bytes, old: str, new: str) -> bytes:
    assert data.count(old.encode()) == 1, f"{old!r} is not in it once"
    return data.replace(old.encode(), new.encode())


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
