"""`outpost-hub agent-releases upload|list`: agent releases built by
scripts/build-agent-release, taken and signed by the hub (hub/fleet/agentreleases.py),
on the hub machine (`--data`)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json

from hub.cli import tables
from hub.cli.datafolder import load_config, open_store
from hub.fleet.agentreleases import AgentShelf
from hub.fleet.enrollment import load_signing_key
from hub.paths import HubPaths
from hub.store import agentreleases as registry


def upload(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    with open_store(paths, load_config(args.data, args.config)) as store:
        shelf = AgentShelf(paths, store, load_signing_key(paths))
        manifest = asyncio.run(shelf.accept(args.folder, by=f"cli:{getpass.getuser()}"))
    size = sum(f.size for f in manifest.files)
    print(
        f"agent release {manifest.version} taken and signed: {len(manifest.files)} files "
        f"({size / 2**20:.1f} MiB) for {', '.join(manifest.platforms)}"
    )
    return 0


def list_releases(args: argparse.Namespace) -> int:
    paths = HubPaths(args.data)
    with open_store(paths, load_config(args.data, args.config)) as store:
        found = asyncio.run(store.run(registry.all_releases))  # no key needed to read
    if not found:
        print("no agent releases")
        return 0
    rows = []
    for r in found:
        m = json.loads(r.manifest)
        rows.append(
            (
                r.version,
                ",".join(m["platforms"]),
                str(len(m["files"])),
                f"{sum(f['size'] for f in m['files']) / 2**20:.1f}",
                m["min_agent_version"],
                tables.when(r.uploaded_at),
                r.uploaded_by,
            )
        )
    print(
        tables.table(("VERSION", "PLATFORMS", "FILES", "MiB", "FROM AGENT", "UPLOADED", "BY"), rows)
    )
    return 0
