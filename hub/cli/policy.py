"""`outpost-hub policy`: show the layers (or a device's effective policy), set a layer
from a file, delete one, through the hub's API."""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from hub.cli import jsontext, remote, tables
from hub.fleet.labels import parse_selector


def show_policy(args: argparse.Namespace) -> int:
    """Every layer, one layer, or (--device) what one device runs and why."""
    if args.layer and args.device:
        raise ValueError(
            f"layer {args.layer!r} and --device both given: show one layer, or a device's "
            "effective policy (every layer that applies to it, merged), not both"
        )

    async def show(client: remote.Client) -> int:
        if args.device:
            found = await client.get(f"/api/v1/devices/{quote(args.device, safe='')}/policy")
            if args.json:
                remote.show_json(found)
                return 0
            drift = " (not yet applied)" if found["drift"] else ""
            refused = (
                f"; refused version {found['rejected_version']}: {found['reason']}"
                if found["rejected_version"]
                else ""
            )
            sent = (
                f"not sent: {found['undeliverable']}" if found.get("undeliverable") else "published"
            )
            print(
                f"{args.device}: version {found['version']} {sent}, {found['applied_version']} "
                f"applied{drift}{refused}\n  layers {', '.join(found['layers']) or 'none'}\n"
                + json.dumps(found["effective"], indent=2, sort_keys=True)
            )
            return 0
        layers = (await client.get("/api/v1/policy/layers"))["items"]
        if args.layer:
            layers = [x for x in layers if x["name"] == args.layer]
            if not layers:
                raise remote.RemoteError(f"no policy layer {args.layer!r}", 404)
        if args.json:
            remote.show_json(layers[0] if args.layer else layers)
        elif args.layer:
            print(_render_layer(layers[0]) + "\n" + json.dumps(layers[0]["document"], indent=2))
        else:
            print(
                tables.table(
                    ("LAYER", "APPLIES TO", "RANK", "FIELDS", "UPDATED", "BY"),
                    [_row(x) for x in layers],
                )
            )
        return 0

    return remote.run(args, show)


def _row(x: dict[str, Any]) -> tuple[str, ...]:
    return (
        x["name"],
        _scope(x),
        str(x["rank"]) if x["scope"] == "group" else "-",
        ",".join(sorted(x["document"])) or "-",
        tables.when(x["updated_at"]),
        x["updated_by"],
    )


def _scope(x: dict[str, Any]) -> str:
    if x["scope"] == "group":
        return f"group {tables.labels(x['selector'])}"
    if x["scope"] == "device":
        return f"device {x['device']}"
    return "the fleet"


def _render_layer(x: dict[str, Any]) -> str:
    return f"{x['name']}: {_scope(x)}; updated {tables.when(x['updated_at'])} by {x['updated_by']}"


def set_policy(args: argparse.Namespace) -> int:
    """Write a layer: the policy fields from a JSON file, and where it applies."""
    try:
        with open(args.file, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {args.file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{args.file} is not JSON text (UTF-8): {exc}") from exc
    document = jsontext.parse(text, args.file)
    selector = parse_selector(args.selector, "--selector")
    if args.device and selector:
        raise ValueError(
            "--device and --selector both given: a layer is a device's override or a "
            "group's, not both"
        )
    if args.layer == "fleet" and (args.device or selector or args.rank):
        raise ValueError(
            "the layer named fleet applies to every device: it takes no --device, "
            "--selector or --rank (name another layer for a device's override or a group)"
        )
    if args.layer == "fleet":
        body: dict[str, Any] = {"scope": "fleet", "document": document}
    elif args.device:
        body = {"scope": "device", "device": args.device, "document": document}
    elif selector:
        body = {"scope": "group", "selector": selector, "rank": args.rank, "document": document}
    else:
        raise ValueError(
            f"layer {args.layer!r}: say where it applies, --selector KEY=VALUE (a group) or "
            "--device ID (an override); only the layer named fleet applies to all"
        )

    async def put(client: remote.Client) -> int:
        layer = await client.call(
            "PUT", f"/api/v1/policy/layers/{quote(args.layer, safe='')}", body=body
        )
        if args.json:
            remote.show_json(layer)
        else:
            print(f"set {_render_layer(layer)}; devices get it within seconds")
        return 0

    return remote.run(args, put)


def delete_policy(args: argparse.Namespace) -> int:
    async def delete(client: remote.Client) -> int:
        await client.call("DELETE", f"/api/v1/policy/layers/{quote(args.layer, safe='')}")
        print(f"deleted layer {args.layer}")
        return 0

    return remote.run(args, delete)
