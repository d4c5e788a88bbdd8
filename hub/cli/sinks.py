"""`outpost-hub sinks`: each sink's state, its dead letters, and a replay from a time,
through the hub's API."""

from __future__ import annotations

import argparse
import datetime
import time
from urllib.parse import quote

from hub.cli import remote, tables
from outpost import durations


def parse_time(text: str) -> float:
    """`2026-12-04T10:00`, `2026-12-04T10:00:00Z` (local time unless it says), or an age
    such as `2h` (that long ago), as epoch seconds."""
    try:
        return time.time() - durations.parse(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time (2026-12-04T10:00, local unless it names a zone) "
            "nor an age (30m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time, as people write it
    return moment.timestamp()


def list_sinks(args: argparse.Namespace) -> int:
    async def listed(client: remote.Client) -> int:
        sinks = (await client.get("/api/v1/sinks"))["items"]
        if args.json:
            remote.show_json(sinks)
            return 0
        if not sinks:
            print("no sinks configured ([[hub.sinks]] in hub.toml; see docs/sinks.md)")
            return 0
        rows = [
            (
                s["name"],
                s["kind"],
                s["state"] + (f": {s['error']}" if s["error"] else ""),
                f"{s['lag_events']:,}",
                f"{s['lag_seconds']:.1f} s",
                f"{s['delivered']:,}",
                str(s["retried"]),
                str(s["dead_lettered"]),
                str(s["overflowed"]),
            )
            for s in sinks
        ]
        header = (
            "SINK",
            "KIND",
            "STATE",
            "LAG",
            "LAG AGE",
            "DELIVERED",
            "RETRIED",
            "DEAD",
            "SKIPPED",
        )
        print(tables.table(header, rows))
        return 0

    return remote.run(args, listed)


def dead_letters(args: argparse.Namespace) -> int:
    async def shown(client: remote.Client) -> int:
        page = await client.get(
            f"/api/v1/sinks/{quote(args.sink, safe='')}/dead-letters", limit=str(args.limit)
        )
        if args.json:
            remote.show_json(page["items"])
            return 0
        rows = [
            (tables.when(d["at"]), d["event_id"], d["type"], d["subject"] or "-", d["reason"])
            for d in page["items"]
        ]
        print(tables.table(("REFUSED", "EVENT", "TYPE", "DEVICE", "WHY"), rows))
        return 0

    return remote.run(args, shown)


def replay(args: argparse.Namespace) -> int:
    async def again(client: remote.Client) -> int:
        answer = await client.call(
            "POST",
            f"/api/v1/sinks/{quote(args.sink, safe='')}/replay",
            body={"from_time": args.from_time},
        )
        if args.json:
            remote.show_json(answer)
        else:
            print(
                f"sink {answer['sink']} delivers {answer['events']:,} kept events again, from "
                f"{tables.when(args.from_time)} on (their ids are the same: a consumer "
                "that dedupes sees each once)"
            )
        return 0

    return remote.run(args, again)
