"""An agent release uploaded over the API takes its size on disk once, not twice.

deploy/kubernetes gives agent-releases/ a volume of its own with a size limit, past
which the kubelet evicts the pod. The upload's parts arrive in a staging folder there;
taking the release used to copy them into a second one before moving them into place,
so an upload needed twice its size free. Here agent-releases/ is a real small tmpfs:
a release of more than half its size is taken, with room to spare for nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hub.app import Hub
from outpost import agentrelease
from tests import disks
from tests.api_client import ApiClient
from tests.integration.test_agent_releases_api import Part, left_behind, post_release

MIB = 1 << 20
DISK_MIB = 10
VERSION = "0.7.5"


def fake_release(sizes: dict[str, int]) -> list[Part]:
    """An upload whose manifest names these wheels (random bytes: the hub checks sizes
    and digests, and never opens a wheel)."""
    parts: list[Part] = []
    entries = []
    for name, size in sizes.items():
        blob = os.urandom(size)
        parts.append(("file", blob, name))
        digest = hashlib.sha256(blob).hexdigest()
        platform = "any" if name.endswith("-none-any.whl") else "x86_64"
        entries.append({"name": name, "sha256": digest, "size": size, "platform": platform})
    manifest = {
        "version": VERSION,
        "python": "3.11",
        "platforms": ["x86_64"],
        "files": entries,
        "min_hub_version": "0.1.0",
        "min_agent_version": "0.1.0",
    }
    return [("manifest", json.dumps(manifest).encode(), agentrelease.MANIFEST), *parts]


async def test_an_upload_of_over_half_the_free_space_is_taken(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    admin = await api.token("admin")
    wheels = {
        f"outpost-{VERSION}-py3-none-any.whl": 1 * MIB,
        "numpy-2.0.0-cp311-cp311-manylinux_x86_64.whl": 5 * MIB,
    }
    assert DISK_MIB * MIB / 2 < sum(wheels.values()) < DISK_MIB * MIB * 0.8
    assert not hub.paths.agent_releases.exists()  # made at the first upload

    with disks.small_disk(hub.paths.agent_releases, f"{DISK_MIB}m"):
        taken = await post_release(api, admin, fake_release(wheels))

        assert taken.status == 201, taken.body
        assert (taken.body["version"], taken.body["files"]) == (VERSION, 2)
        for name, size in wheels.items():
            assert (hub.paths.agent_releases / VERSION / name).stat().st_size == size
        assert left_behind(hub) == [VERSION, *(f"{VERSION}/{n}" for n in sorted(wheels))]
