"""`outpost-hub audit`: the audit log, newest first (admins only)."""

from __future__ import annotations

import argparse
import json

from hub.cli import remote, tables


def show_audit(args: argparse.Namespace) -> int:
    async def show(client: remote.Client) -> int:
        page = await client.get("/api/v1/audit", limit=str(args.limit))
        entries = page["items"]
        if args.json:
            remote.show_json(entries)
            return 0
        rows = [
            (
                tables.when(e["at"]),
                e["subject"],
                e["role"] or "-",
                e["action"],
                str(e["status"]),
                json.dumps(e["detail"], sort_keys=True)[:80] if e["detail"] else "",
            )
            for e in entries
        ]
        print(tables.table(("WHEN", "WHO", "ROLE", "ACTION", "STATUS", "DETAIL"), rows))
        return 0

    return remote.run(args, show)
