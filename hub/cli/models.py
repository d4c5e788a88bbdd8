"""`outpost-hub models` (upload a bundle folder, list the catalogue) and `outpost-hub
rollouts` (start one, follow it live, halt it, list them), through the hub's API."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from hub.cli import remote, tables
from hub.fleet.labels import parse_selector
from outpost.modelbundle import (
    MANIFEST_FILE,
    MAX_MODEL_BYTES,
    MODEL_FILE,
    SAMPLE_FILE,
    BundleError,
    ClaimMismatchError,
    UploadRefusedError,
    check_upload,
    file_sha256,
    read_sidecar,
)

BUNDLE_FILES = {"model": "model.tflite", "manifest": "model.json", "sample": "sample.json"}
FOLLOW_EVERY_S = 1.0
ENDED = ("completed", "halted", "stopped", "superseded")


def upload_model(args: argparse.Namespace) -> int:
    """Upload a model bundle folder (model.tflite, model.json, sample.json)."""
    folder: Path = args.folder
    missing = [f for f in BUNDLE_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is not a model bundle folder: it lacks {', '.join(missing)} "
            f"(a bundle holds {', '.join(BUNDLE_FILES.values())})"
        )
    # Checked here as the hub checks it: the hub's answer to a broken file names its form
    # part ("body.manifest"), not the file.
    try:
        check_bundle_folder(folder)
    except BundleError as exc:
        raise BundleError(f"{exc}; nothing was uploaded") from exc

    async def upload(client: remote.Client) -> int:
        form = aiohttp.FormData()
        for part, name in BUNDLE_FILES.items():
            form.add_field(part, (folder / name).read_bytes(), filename=name)
        uploaded = await client.call("POST", "/api/v1/models", form=form)
        model = uploaded["model"]
        if args.json:
            remote.show_json(uploaded)
        else:
            print(
                f"uploaded {model['name']} {model['version']} ({model['size']} bytes, sha256 "
                f"{model['sha256'][:16]}..., checked with {uploaded['checked_with']}); roll "
                f"it out with `outpost-hub rollouts start {model['name']} {model['version']}`"
            )
        return 0

    return remote.run(args, upload)


def check_bundle_folder(folder: Path) -> None:
    """Refuse (`BundleError`, naming the file) a bundle the hub would refuse by its model
    file, manifest or sample: the hub's rule (`modelbundle.check_upload`), not a device's
    (`read_bundle`), so the manifest's `sha256` and `size` may be left out."""
    model_path, manifest_path = folder / MODEL_FILE, folder / MANIFEST_FILE
    try:
        size = model_path.stat().st_size
        # Hashed only when the size is one the hub takes: no use reading a huge file.
        digest = file_sha256(model_path) if 0 < size <= MAX_MODEL_BYTES else ""
    except OSError as exc:
        raise BundleError(f"cannot read {model_path}: {exc.strerror or exc}") from exc
    # read_sidecar's refusals (not valid JSON, over the limit) already name the file.
    manifest, sample = read_sidecar(manifest_path), read_sidecar(folder / SAMPLE_FILE)
    try:
        check_upload(size, digest, manifest, sample)
    except ClaimMismatchError as exc:
        raise BundleError(
            f"{manifest_path}: {exc.path} {exc.claimed!r} does not match {MODEL_FILE} "
            f"({exc.actual!r}); correct it or leave it out (the hub computes it)"
        ) from exc
    except UploadRefusedError as exc:
        where = f"{exc.path}: " if exc.path else ""
        raise BundleError(f"{folder / BUNDLE_FILES[exc.part]}: {where}{exc.problem}") from exc


def list_models(args: argparse.Namespace) -> int:
    """The models uploaded to the hub."""

    async def listed(client: remote.Client) -> int:
        models = (await client.get("/api/v1/models"))["items"]
        if args.json:
            remote.show_json(models)
            return 0
        rows = [
            (
                m["name"],
                m["version"],
                f"{m['size']:,}",
                ",".join(m["labels"])[:40],
                tables.when(m["uploaded_at"]),
                m["uploaded_by"],
            )
            for m in models
        ]
        print(tables.table(("MODEL", "VERSION", "BYTES", "LABELS", "UPLOADED", "BY"), rows))
        return 0

    return remote.run(args, listed)


def start_rollout(args: argparse.Namespace) -> int:
    """Start a staged roll-out, then follow it (unless --no-follow)."""
    selector = parse_selector(args.selector, "--selector")

    if args.agent and (args.model or args.version):
        raise ValueError("give --agent VERSION alone, or MODEL VERSION, not both")
    if not args.agent and not (args.model and args.version):
        raise ValueError("give MODEL VERSION, or --agent VERSION for an agent release")
    what: dict[str, Any] = (
        {"agent": args.agent} if args.agent else {"model": args.model, "version": args.version}
    )
    criteria = {
        k: v
        for k, v in (
            ("agreement_min", args.agreement_min),
            ("latency_ratio_max", args.latency_ratio_max),
            ("min_samples", args.min_samples),
        )
        if v is not None
    }
    if criteria and not args.shadow:
        raise ValueError("--agreement-min, --latency-ratio-max and --min-samples go with --shadow")
    if args.shadow:
        what.update(mode="shadow", promote_if=criteria)

    async def start(client: remote.Client) -> int:
        body: dict[str, Any] = {**what, "selector": selector}
        if args.canary is not None:
            body["canary_share"] = args.canary
        rollout = await client.call("POST", "/api/v1/rollouts", body=body)
        if args.json and not args.follow:
            remote.show_json(rollout)
            return 0
        print(f"roll-out {rollout['id']} of {_released(rollout)} started")
        return await _follow(client, rollout["id"], args) if args.follow else 0

    return remote.run(args, start)


def show_rollout(args: argparse.Namespace) -> int:
    """A roll-out's progress, followed live until it ends (Ctrl-C leaves it running)."""

    async def show(client: remote.Client) -> int:
        if args.json:
            remote.show_json(await client.get(f"/api/v1/rollouts/{args.id}"))
            return 0
        return await _follow(client, args.id, args)

    return remote.run(args, show)


async def _follow(client: remote.Client, rollout_id: int, args: argparse.Namespace) -> int:
    names = await client.device_names()
    shown = ""
    try:
        while True:
            rollout = await client.get(f"/api/v1/rollouts/{rollout_id}")
            text = render_rollout(rollout, names)
            if text != shown:
                print(text if not shown else "\n" + text, flush=True)
                shown = text
            if rollout["state"] in ENDED or not args.follow:
                return 1 if rollout["state"] in ("halted", "stopped") else 0
            await asyncio.sleep(FOLLOW_EVERY_S)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(
            f"\nstopped following; roll-out {rollout_id} goes on (halt it with "
            f"`outpost-hub rollouts halt {rollout_id}`)"
        )
        return 0


def render_rollout(r: dict[str, Any], names: dict[str, str]) -> str:
    """A roll-out's headline, counts and devices."""
    counts = tables.counts(r["counts"], none="no devices")
    head = (
        f"roll-out {r['id']}: {_released(r)} to {tables.labels(r['selector'])}, "
        f"canary {r['canary_share']:.0%}: {r['state'].upper()}"
        + (f" ({r['reason']})" if r["reason"] else "")
        + f" [{time.strftime('%H:%M:%S')}]"
    )
    rows = [
        (names.get(d["device"], d["device"]), d["device"], d["stage"], d["state"], d["detail"])
        for d in r["devices"]
    ]
    body = tables.table(("NAME", "DEVICE", "STAGE", "STATE", "DETAIL"), rows)
    return f"{head}\n  {counts}\n{_shadow(r.get('shadow'))}{body}"


def _shadow(s: dict[str, Any] | None) -> str:
    """A shadow roll-out's comparison, live beside candidate."""
    if not s:
        return ""
    agreement = "-" if s["agreement"] is None else f"{s['agreement']:.3f}"
    ratio = "-" if s["latency_ratio"] is None else f"{s['latency_ratio']:.2f}"
    rows = [
        (side, _ms(s[side]["latency_p50_ms"]), _ms(s[side]["latency_p99_ms"]),
         _ms(s[side]["latency_mean_ms"]),
         "-" if s[side]["confidence_mean"] is None else f"{s[side]['confidence_mean']:.2f}")
        for side in ("live", "candidate")
    ]  # fmt: skip
    table = tables.table(("", "P50 MS", "P99 MS", "MEAN MS", "CONFIDENCE"), rows)
    return (
        f"  shadow: {s['samples']} of {s['min_samples']} samples, agreement {agreement}, "
        f"latency ratio {ratio}\n{table}\n"
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _released(rollout: dict[str, Any]) -> str:
    """What a roll-out gives its devices, in words."""
    if rollout.get("kind") == "agent":
        return f"the agent {rollout['version']}"
    return f"{rollout['model']} {rollout['version']}"


def halt_rollout(args: argparse.Namespace) -> int:
    async def halt(client: remote.Client) -> int:
        body = {"reason": args.reason} if args.reason else {}
        rollout = await client.call("POST", f"/api/v1/rollouts/{args.id}/halt", body=body)
        if args.json:
            remote.show_json(rollout)
        else:
            print(f"roll-out {rollout['id']} halted: {rollout['reason']}")
        return 0

    return remote.run(args, halt)


def list_rollouts(args: argparse.Namespace) -> int:
    async def listed(client: remote.Client) -> int:
        rollouts = (await client.get("/api/v1/rollouts"))["items"]
        if args.json:
            remote.show_json(rollouts)
            return 0
        rows = [
            (
                str(r["id"]),
                "(agent)" if r.get("kind") == "agent" else r["model"],
                r["version"],
                tables.labels(r["selector"]),
                r["state"],
                tables.counts(r["counts"]),
                tables.when(r["created_at"]),
            )
            for r in rollouts
        ]
        header = ("ID", "MODEL", "VERSION", "SELECTOR", "STATE", "DEVICES", "STARTED")
        print(tables.table(header, rows))
        return 0

    return remote.run(args, listed)
