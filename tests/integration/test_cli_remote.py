"""The operator's CLI against a real running hub, its broker and a real agent: every
command goes through the HTTPS API as a user would run it (a child process), prints
tables or JSON, and answers mistakes and refusals with the API's message and a non-zero
exit, never a traceback. Names stand wherever ids do."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge.identity import DevicePaths, Identity
from edge.inference.directory import ModelDirectory
from hub.app import Hub
from outpost.modelbundle import read_bundle
from tests.api_client import ApiClient
from tests.support import REPO, SHIPPED_MODELS, AgentProcess, add_device, eventually, mint_token

VIB = "vibration-anomaly"
SAMPLE = read_bundle(SHIPPED_MODELS[0]).sample
assert SAMPLE is not None
assert SAMPLE.expected is not None
EXPECTED = SAMPLE.expected.label
INPUT = SAMPLE.input


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def run(module: str, *argv: str, stdin: str = "") -> Ran:
    """Run `python -m MODULE ARGV` without blocking the hub's event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *argv,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 120)
    assert process.returncode is not None
    ran = Ran(process.returncode, out.decode(), err.decode())
    assert "Traceback" not in ran.err, ran.err
    return ran


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


async def enroll_by_cli(hub: Hub, folder: Path, *extra: str) -> Ran:
    token = await mint_token(hub, labels={"fleet": "t"})
    return await run(
        "edge.cli",
        "enroll",
        "--data",
        str(folder),
        "--token",
        token,
        "--profile",
        "generic",
        *extra,
    )


async def test_agent_enrolls_by_profile_name_and_under_a_name_the_hub_keeps_unique(
    hub: Hub, tmp_path: Path
) -> None:
    first = await enroll_by_cli(hub, tmp_path / "a", "--name", "pump-station")
    second = await enroll_by_cli(hub, tmp_path / "b", "--name", "pump-station")
    bad_name = await enroll_by_cli(hub, tmp_path / "c", "--name", "Pump Station!")
    id_shaped = await enroll_by_cli(hub, tmp_path / "c", "--name", "dev-0123456789ab")
    token = await mint_token(hub)
    no_profile = await run(
        "edge.cli", "enroll", "--data", str(tmp_path / "c"), "--token", token, "--profile", "pi9"
    )
    version = await run("edge.cli", "--version")

    assert first.code == 0, first.err
    assert first.out.startswith("enrolled as pump-station (dev-")
    assert second.code == 0, second.err
    assert second.out.startswith("enrolled as pump-station-2 (dev-")
    a = Identity.load(DevicePaths(tmp_path / "a"))
    assert (a.name, (await hub.parts.store.find_device("pump-station")).device_id) == (  # type: ignore[union-attr]
        "pump-station",
        a.device_id,
    )
    assert bad_name.code == 2
    assert "'Pump Station!' is not a device name" in bad_name.err
    assert id_shaped.code == 2
    assert "not shaped like a device id" in id_shaped.err
    assert no_profile.code == 2
    assert "neither a file nor the name of a shipped profile" in no_profile.err
    assert "raspberry-pi-4" in no_profile.err  # the names it knows
    assert not (tmp_path / "c" / "identity").exists()
    assert version.code == 0
    assert version.out.startswith("outpost-agent ")


@pytest.mark.timeout(240)
async def test_the_operators_day_through_the_cli(
    hub: Hub, api: ApiClient, tmp_path: Path, agents: Callable[..., AgentProcess]
) -> None:
    enrolled = await enroll_by_cli(hub, tmp_path / "agent", "--name", "pump-station")
    assert enrolled.code == 0, enrolled.err
    paths = DevicePaths(tmp_path / "agent")
    directory = ModelDirectory(paths.models)
    for folder in SHIPPED_MODELS:
        directory.install(folder)
    agent = agents(paths)
    device_id = Identity.load(paths).device_id

    async def ready() -> bool:
        assert agent.process.poll() is None, agent.output()
        d = await hub.parts.store.device(device_id)
        return bool(d and d.online and d.task_slots > 0 and len(d.models) == 2)

    await eventually(ready, timeout=30, what="the agent ready for tasks")
    await add_device(hub, "dev-south0000001", labels={"site": "south"})  # enrolled, offline

    admin_file = tmp_path / "admin.token"
    admin_file.write_text(await api.token("admin", subject="alice"))
    viewer_file = tmp_path / "viewer.token"
    viewer_file.write_text(await api.token("viewer", subject="vic"))
    ca = str(hub.paths.ca_cert)
    as_admin = ("--hub", hub.config.hub_url, "--token-file", str(admin_file), "--ca", ca)
    as_viewer = ("--hub", hub.config.hub_url, "--token-file", str(viewer_file), "--ca", ca)

    async def cli(*argv: str, stdin: str = "") -> Ran:
        return await run("hub.cli", *argv, stdin=stdin)

    # The fleet, by name.
    listed = await cli("devices", "list", *as_viewer)
    assert listed.code == 0, listed.err
    header, *rows = listed.out.splitlines()
    assert header.split()[:3] == ["NAME", "DEVICE", "PROFILE"]
    assert any(r.split()[:3] == ["pump-station", device_id, "generic"] for r in rows), rows

    labelled = await cli("devices", "label", "pump-station", "site=north", "fleet-", *as_admin)
    renamed = await cli("devices", "rename", "pump-station", "pump-7", *as_admin)
    shown = await cli("devices", "show", "pump-7", *as_viewer)
    refused = await cli("devices", "label", "pump-7", "site=east", *as_viewer)
    assert labelled.code == 0, labelled.err
    assert "labels site=north" in labelled.out
    assert renamed.code == 0, renamed.err
    assert renamed.out.startswith("pump-7 (")
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == f"pump-7 ({device_id})"
    for kind in ("enrolled", "online", "relabelled", "renamed"):
        assert f" {kind} " in shown.out, shown.out
    assert refused.code == 1
    assert "[HTTP 403]" in refused.err
    device = await hub.parts.store.device(device_id)
    assert device is not None
    assert (device.name, device.labels) == ("pump-7", {"site": "north"})

    # A task from a file, waited for; a misspelled model refused with what the fleet has.
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps({"model": VIB, "input": INPUT, "dtype": "int8"}))
    done = await cli("tasks", "submit", str(task_file), "--wait", *as_admin)
    assert done.code == 0, done.err + done.out
    assert " succeeded " in done.out
    assert "pump-7" in done.out
    assert EXPECTED in done.out

    # The same input as a file of the tensor's bytes; that file given wrongly, named.
    tensor = tmp_path / "window.int8"
    tensor.write_bytes(bytes(v & 0xFF for row in INPUT[0] for v in row))
    from_bytes = await cli(
        "tasks", "submit", "--model", VIB, "--input-file", str(tensor), "--dtype", "int8",
        "--wait", *as_admin,
    )  # fmt: skip
    assert from_bytes.code == 0, from_bytes.err + from_bytes.out
    assert EXPECTED in from_bytes.out
    (tmp_path / "empty").write_bytes(b"")
    for wrong, said in (
        (("--input", "[[1]]", "--input-file", str(tensor)), "not both"),
        (("--input-file", str(tmp_path / "empty")), "is empty"),
        (("--input-file", str(tmp_path / "missing")), "cannot read --input-file"),
    ):
        mistake = await cli("tasks", "submit", "--model", VIB, *wrong, *as_admin)
        assert mistake.code == 2, mistake.err
        assert said in mistake.err
        assert "Traceback" not in mistake.err
    with_file = await cli("tasks", "submit", str(task_file), "--dtype", "int8", *as_admin)
    assert with_file.code == 2
    assert "go with --model" in with_file.err

    typo = await cli(
        "tasks", "submit", "--model", "vibration-anomoly", "--input", "[[1]]", *as_admin
    )
    assert typo.code == 1
    assert "no enrolled device has the model vibration-anomoly" in typo.err
    assert "vibration-anomaly (1.0.0)" in typo.err
    assert "[HTTP 422]" in typo.err

    from_stdin = await cli(
        "tasks", "submit", "-", "--json", *as_admin,
        stdin=json.dumps({"model": "future-model", "input": [[1.0]], "wait_for_model": True}),
    )  # fmt: skip
    assert from_stdin.code == 0, from_stdin.err
    (waiting_id,) = from_stdin.json()["ids"]
    show_waiting = await cli("tasks", "show", waiting_id, *as_viewer)
    assert show_waiting.code == 0, show_waiting.err
    assert "queued (no device has the model future-model)" in show_waiting.out
    cancelled = await cli("tasks", "cancel", waiting_id, *as_admin)
    again = await cli("tasks", "cancel", waiting_id, *as_admin)
    listed_tasks = await cli("tasks", "list", "--state", "cancelled", "--json", *as_viewer)
    # A device with none listed, and a device that is not one (a typo): told apart.
    none_there = await cli("tasks", "list", "--device", "pump-7", "--state", "failed", *as_viewer)
    no_such = await cli("tasks", "list", "--device", "pump-8", *as_viewer)
    assert none_there.code == 0, none_there.err
    assert no_such.code == 1
    assert "pump-8" in no_such.err
    assert "[HTTP 404]" in no_such.err
    assert cancelled.code == 0
    assert f"{waiting_id} cancelled" in cancelled.out
    assert again.code == 1
    assert "already ended: cancelled" in again.err
    assert [t["id"] for t in listed_tasks.json()] == [waiting_id]

    # A new model version uploaded from its folder, rolled out, halted.
    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED_MODELS[0], bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["version"] = "1.1.0"
    (bundle / "model.json").write_text(json.dumps(manifest))
    uploaded = await cli("models", "upload", str(bundle), *as_admin)
    not_bundle = await cli("models", "upload", str(tmp_path), *as_admin)
    models = await cli("models", "list", "--json", *as_viewer)
    assert uploaded.code == 0, uploaded.err
    assert uploaded.out.startswith(f"uploaded {VIB} 1.1.0")
    assert not_bundle.code == 2
    assert "lacks model.tflite, model.json, sample.json" in not_bundle.err
    assert [(m["name"], m["version"]) for m in models.json()] == [(VIB, "1.1.0")]

    ambiguous = await cli(
        "rollouts", "start", VIB, "1.1.0", "--selector", "site=south", "--selector",
        "site=north", "--no-follow", *as_admin,
    )  # fmt: skip
    assert ambiguous.code == 2
    assert "--selector: 'site' is given twice" in ambiguous.err
    started = await cli(
        "rollouts", "start", VIB, "1.1.0", "--selector", "site=south", "--canary", "100%",
        "--no-follow", *as_admin,
    )  # fmt: skip
    assert started.code == 0, started.err
    rollout_id = started.out.split()[1]
    progress = await cli("rollouts", "show", rollout_id, "--no-follow", *as_viewer)
    assert progress.code == 0, progress.err
    assert "CANARY" in progress.out
    assert "dev-south0000001" in progress.out
    halted = await cli("rollouts", "halt", rollout_id, "--reason", "wrong site", *as_admin)
    halted_again = await cli("rollouts", "halt", rollout_id, *as_admin)
    listed_rollouts = await cli("rollouts", "list", *as_viewer)
    assert listed_rollouts.code == 0, listed_rollouts.err
    row = listed_rollouts.out.splitlines()[1].split()
    assert row[:5] == [rollout_id, VIB, "1.1.0", "site=south", "halted"], row
    assert row[5] == "1", row  # "1 <state>"
    assert "{" not in listed_rollouts.out  # not JSON
    assert halted.code == 0, halted.err
    assert "halted by alice: wrong site" in halted.out
    assert halted_again.code == 1
    assert "not in progress: it is halted" in halted_again.err

    # Policy layers, and what the device runs.
    policy_file = tmp_path / "north.json"
    policy_file.write_text(json.dumps({"log_level": "debug"}))
    put = await cli(
        "policy", "set", "north", str(policy_file), "--selector", "site=north", *as_admin
    )
    layer = await cli("policy", "show", "north", "--json", *as_viewer)
    assert put.code == 0, put.err
    assert layer.json()["document"] == {"log_level": "debug"}

    async def applied() -> bool:
        found = await hub.parts.store.device_policy(device_id)
        return bool(found and found.applied_version >= found.version > 0)

    await eventually(applied, timeout=30, what="the device applying the north layer")
    on_device = await cli("policy", "show", "--device", "pump-7", *as_viewer)
    deleted = await cli("policy", "delete", "north", *as_admin)
    gone = await cli("policy", "show", "north", *as_viewer)
    assert on_device.code == 0, on_device.err
    assert "layers north" in on_device.out
    assert deleted.code == 0
    assert gone.code == 1
    assert "no policy layer 'north'" in gone.err

    # The audit log names who did what; a viewer may not read it.
    log = await cli("audit", "--json", "--limit", "100", *as_admin)
    denied = await cli("audit", *as_viewer)
    actions = {(e["subject"], e["action"]) for e in log.json()}
    for action in ("device.update", "rollout.start", "rollout.halt", "task.cancel"):
        assert ("alice", action) in actions, actions
    assert denied.code == 1
    assert "[HTTP 403]" in denied.err

    # On the hub machine, --data alone finds the hub and mints a short admin session.
    local = await cli("devices", "show", "pump-7", "--data", str(hub.paths.root), "--json")
    assert local.code == 0, local.err
    assert local.json()["id"] == device_id


async def test_remote_commands_say_what_is_missing(hub: Hub, tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    nowhere = await run("hub.cli", "tasks", "list")
    no_token = await run("hub.cli", "tasks", "list", "--hub", hub.config.hub_url)
    empty_token = await run(
        "hub.cli", "tasks", "list", "--hub", hub.config.hub_url, "--token-file", str(empty)
    )
    not_https = await run("hub.cli", "tasks", "list", "--hub", "http://127.0.0.1:1")
    wrong_ca = await run(
        "hub.cli", "devices", "list", "--hub", hub.config.hub_url, "--token-file", str(empty),
        "--ca", str(REPO / "pyproject.toml"),
    )  # fmt: skip
    # Mistakes in the command line, or in the files it names: exit 2, as any usage error.
    assert nowhere.code == 2
    assert "which hub?" in nowhere.err
    assert no_token.code == 2
    assert "who is asking?" in no_token.err
    assert empty_token.code == 2
    assert "is empty" in empty_token.err
    assert not_https.code == 2
    assert "must be an https:// URL" in not_https.err
    assert wrong_ca.code == 2
    assert "cannot use" in wrong_ca.err
    for url, said in (
        ("https://", "names no host"),
        ("https://127.0.0.1:99999", "is not a URL: Port out of range"),
        ("https://[::1", "is not a URL: Invalid IPv6 URL"),
        ("https://hub example", "holds a space"),
        ("https://127.0.0.1:8443/?x=1", "without ? or #"),
    ):
        malformed = await run("hub.cli", "tasks", "list", "--hub", url, "--token-file", str(empty))
        assert malformed.code == 2, (url, malformed.err)
        assert said in malformed.err, (url, malformed.err)
    # A hub that is not there is no usage mistake (exit 1), and is said plainly.
    token = tmp_path / "some.token"
    token.write_text("aaa.bbb.ccc\n")
    closed = await run("hub.cli", "tasks", "list", "--hub", "https://127.0.0.1:1",
                       "--token-file", str(token))  # fmt: skip
    assert closed.code == 1
    assert "cannot reach the hub at https://127.0.0.1:1: Connection refused" in closed.err
    assert "SSLContext" not in closed.err
