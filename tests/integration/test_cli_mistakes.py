"""A careless user's mistakes with both command lines (child processes, as a user runs
them; a real hub where the command talks to one): each is refused with a message that
names what was wrong and a non-zero exit, never a traceback, and changes nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.app import Hub
from hub.fleet import pki
from hub.initialise import initialise
from hub.paths import HubPaths
from tests.api_client import ApiClient
from tests.integration.test_cli_remote import Ran, run
from tests.support import REPO


def cli(module: str, *argv: str) -> Ran:
    done = subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def hub_settings() -> str:
    return "api_rate_per_s = 1e6\napi_rate_burst = 100000\n"


async def test_a_fleet_layer_with_device_or_selector_flags_is_refused_and_kept(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(await api.token("admin", subject="alice"))
    as_admin = ("--hub", hub.config.hub_url, "--token-file", str(admin_file), "--ca",
                str(hub.paths.ca_cert))  # fmt: skip
    fleet, one = tmp_path / "fleet.json", tmp_path / "one.json"
    fleet.write_text(json.dumps({"heartbeat_interval": 30, "log_level": "info"}))
    one.write_text(json.dumps({"log_level": "debug"}))
    assert (await run("hub.cli", "policy", "set", "fleet", str(fleet), *as_admin)).code == 0

    meant_for_one = await run(
        "hub.cli", "policy", "set", "fleet", str(one), "--device", "pump-1", *as_admin
    )
    both = await run(
        "hub.cli", "policy", "set", "pumps", str(one), "--device", "pump-1", "--selector",
        "site=north", *as_admin,
    )  # fmt: skip

    assert meant_for_one.code == 2
    assert "applies to every device" in meant_for_one.err
    assert both.code == 2
    assert "--device and --selector both given" in both.err
    # A layer and a device to show: the device's policy alone would hide the layer asked for.
    shown_both = await run("hub.cli", "policy", "show", "fleet", "--device", "pump-1", *as_admin)
    assert shown_both.code == 2
    assert "layer 'fleet' and --device both given" in shown_both.err
    assert not shown_both.out
    shown = await run("hub.cli", "policy", "show", "fleet", "--json", *as_admin)
    assert shown.json()["document"] == {"heartbeat_interval": 30, "log_level": "info"}


async def test_a_task_id_is_only_ever_a_task_id(hub: Hub, api: ApiClient, tmp_path: Path) -> None:
    """Ids that read as paths reach the task routes as ids, not as other routes."""
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(await api.token("admin", subject="alice"))
    as_admin = ("--hub", hub.config.hub_url, "--token-file", str(admin_file), "--ca",
                str(hub.paths.ca_cert))  # fmt: skip

    shown = await run("hub.cli", "tasks", "show", "../devices", *as_admin)
    cancelled = await run("hub.cli", "tasks", "cancel", "../rollouts/1/halt?", *as_admin)

    assert (shown.code, cancelled.code) == (1, 1)
    assert "no task" in shown.err.lower() or "not found" in shown.err.lower(), shown.err
    assert "cancelled" not in cancelled.out


async def test_ctrl_c_while_waiting_names_the_tasks_that_go_on(
    hub: Hub, api: ApiClient, tmp_path: Path
) -> None:
    """Ctrl-C stops `tasks submit --wait` waiting, not the task: its id is printed, as the
    only way to follow it, and it stays queued on the hub."""
    admin = await api.token("admin", subject="alice")
    (tmp_path / "admin.token").write_text(admin)
    waiting = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.cli", "tasks", "submit", "-", "--wait",
        "--hub", hub.config.hub_url, "--token-file", str(tmp_path / "admin.token"),
        "--ca", str(hub.paths.ca_cert),
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert waiting.stdin is not None
    waiting.stdin.write(json.dumps({"model": "no-such-model", "input": [[1.0]],
                                    "wait_for_model": True}).encode())  # fmt: skip
    waiting.stdin.close()

    # Interrupted once it waits (it says so): the task stored on the hub is not yet
    # enough, as the answer with its id may still be on its way to the command.
    assert waiting.stderr is not None
    said = await asyncio.wait_for(waiting.stderr.readline(), 60)
    assert said.startswith(b"submitted 1 task(s); waiting for them to end"), said
    waiting.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(waiting.communicate(), 60)
    listed = await api.call("GET", "/api/v1/tasks", token=admin)
    (task,) = listed.body["items"]

    assert waiting.returncode == 130, err
    assert "Traceback" not in err.decode()
    assert out.decode().split() == [task["id"]]
    assert "stopped waiting; the 1 task(s) above go on" in err.decode()
    shown = await api.call("GET", f"/api/v1/tasks/{task['id']}", token=admin)
    assert shown.body["state"] == "queued"


@pytest.mark.parametrize("module", ["hub.cli", "edge.cli"])
def test_a_log_level_that_is_no_level_is_a_usage_error(module: str, tmp_path: Path) -> None:
    ran = cli(module, "run", "--data", str(tmp_path), "--log-level", "chatty")
    assert ran.code == 2
    assert "--log-level: invalid choice: 'chatty'" in ran.err


def test_a_runtime_that_is_none_is_a_usage_error(tmp_path: Path) -> None:
    ran = cli("edge.cli", "selfcheck", "--data", str(tmp_path), "--runtime", "onnx")
    assert ran.code == 2
    assert "--runtime: invalid choice: 'onnx'" in ran.err
    assert "'tflite-runtime'" in ran.err  # what it could have been


def test_folders_that_cannot_be_used_are_named_not_a_traceback(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")

    hub_init = cli("hub.cli", "init", "--data", str(a_file / "sub"))
    agent_renew = cli("edge.cli", "renew", "--data", str(a_file))

    assert hub_init.code == 2
    assert "a-file" in hub_init.err
    assert agent_renew.code == 2
    assert "a-file" in agent_renew.err


def test_neither_tool_makes_its_folder_in_the_other_s(hub_paths: HubPaths, tmp_path: Path) -> None:
    agent_folder = tmp_path / "agent"
    (agent_folder / "identity").mkdir(parents=True)
    (agent_folder / "identity" / "identity.json").write_text("{}")
    hub_before = sorted(p.name for p in hub_paths.root.iterdir())

    enrolled = cli(
        "edge.cli", "enroll", "--data", str(hub_paths.root), "--token", "t", "--profile", "x"
    )
    initialised = cli("hub.cli", "init", "--data", str(agent_folder))
    own_folder = cli("hub.cli", "init", "--data", str(tmp_path / "hub2"))

    assert enrolled.code == 2
    assert "is a hub's data folder (it holds pki/ca.key)" in enrolled.err
    assert sorted(p.name for p in hub_paths.root.iterdir()) == hub_before
    assert initialised.code == 2
    assert "is an agent's data folder" in initialised.err
    assert sorted(p.name for p in agent_folder.iterdir()) == ["identity"]
    assert own_folder.code == 0, own_folder.err


@pytest.mark.parametrize(
    "argv",
    [
        ("edge.cli", "models", "list", "--data", ""),
        ("hub.cli", "token", "list", "--data", ""),
        ("hub.cli", "devices", "list", "--data", " "),
    ],
)
def test_an_empty_data_folder_is_a_usage_error_not_the_current_one(argv: tuple[str, ...]) -> None:
    ran = cli(*argv)
    assert ran.code == 2
    assert "--data: an empty path: give the data folder" in ran.err


def test_a_damaged_identity_is_named(tmp_path: Path) -> None:
    identity = tmp_path / "agent" / "identity" / "identity.json"
    identity.parent.mkdir(parents=True)
    identity.write_bytes(b"\xdc\xff not json")

    ran = cli("edge.cli", "renew", "--data", str(tmp_path / "agent"))

    assert ran.code == 2
    assert "identity.json is damaged" in ran.err


def test_a_bootstrap_token_lives_at_most_30_days(hub_paths: HubPaths) -> None:
    refused = cli("hub.cli", "enroll-token", "--data", str(hub_paths.root), "--ttl", "31d")
    allowed = cli("hub.cli", "enroll-token", "--data", str(hub_paths.root), "--ttl", "30d")

    assert refused.code == 2
    assert "at most 30 days" in refused.err
    assert allowed.code == 0, allowed.err


def test_an_empty_token_subject_is_refused_not_replaced(hub_paths: HubPaths) -> None:
    """An empty --subject (an unset variable in a script) is a mistake, not "me"."""
    made = ("hub.cli", "token", "create", "--data", str(hub_paths.root), "--role", "viewer")
    refused = cli(*made, "--subject", "")
    allowed = cli(*made, "--subject", "grafana")

    assert refused.code == 2
    assert "subject must be 1-64" in refused.err
    assert refused.out == ""
    assert allowed.code == 0, allowed.err


def test_output_to_a_reader_that_left_ends_quietly(hub_paths: HubPaths) -> None:
    """`| head -1` closing its end first: no BrokenPipeError traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "enroll-token", "--data", str(hub_paths.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # before the child has even imported: it writes into nothing
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert "Traceback" not in err, err
    assert "BrokenPipe" not in err, err


def test_an_init_cut_short_leaves_nothing_a_second_init_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a full disk) halfway through the keys: nothing half-made is left in
    place, and init run again makes a whole hub."""
    paths = HubPaths(tmp_path / "hub")
    real_issue = pki.issue
    calls: list[int] = []

    def cut_short(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # after the CA and the server certificate's key
            raise KeyboardInterrupt
        return real_issue(*args, **kwargs)

    monkeypatch.setattr(pki, "issue", cut_short)
    with pytest.raises(KeyboardInterrupt):
        initialise(paths, server_names=[])
    monkeypatch.setattr(pki, "issue", real_issue)
    assert not paths.pki.exists()

    ran = cli("hub.cli", "init", "--data", str(paths.root))

    assert ran.code == 0, ran.err
    assert {"ca.crt", "ca.key", "token.key"} <= {p.name for p in paths.pki.iterdir()}
    assert not (paths.root / ".init.partial").exists()


def test_two_inits_at_once_make_one_hub(tmp_path: Path) -> None:
    folder = tmp_path / "hub"
    argv = [sys.executable, "-m", "hub.cli", "init", "--data", str(folder)]
    started = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(2)
    ]
    done = [(p.wait(timeout=120), p.communicate()) for p in started]
    codes = sorted(code for code, _ in done)
    errors = "".join(err for _, (_, err) in done)

    assert codes == [0, 2], errors  # one made it; the other was refused by name
    assert "Traceback" not in errors
    assert "outpost-hub init" in errors or "already initialised" in errors


def test_a_token_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "token.bin"
    binary.write_bytes(b"\xdc\xff\xfe")

    ran = cli(
        "edge.cli", "enroll", "--token-file", str(binary), "--data", str(tmp_path / "agent"),
        "--profile", "generic",
    )  # fmt: skip

    assert ran.code == 2
    assert "holds no token" in ran.err


def test_an_empty_output_folder_writes_nothing_into_the_current_one(
    hub_paths: HubPaths, tmp_path: Path
) -> None:
    """`--out "$UNSET"` wrote the broker's keys and configuration where it ran."""
    here = tmp_path / "here"
    here.mkdir()
    argv = ["broker-config", "--data", str(hub_paths.root), "--kind", "mosquitto", "--force"]

    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", *argv, "--out", ""],
        capture_output=True, text=True, cwd=here, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    assert "argument --out: an empty path: give the folder to write" in done.stderr
    assert list(here.iterdir()) == []


def test_an_empty_database_url_starts_no_hub(hub_paths: HubPaths) -> None:
    """`run --db ""` ran a hub on hub.db; `--replica-id ""` one that was no replica."""
    for argv in (["--db", ""], ["--replica-id", ""], ["--broker", ""]):
        try:
            ran = subprocess.run(
                [sys.executable, "-m", "hub.cli", "run", "--data", str(hub_paths.root), *argv],
                capture_output=True, text=True, cwd=REPO, timeout=20, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {' '.join(argv)}'' started a hub")
        assert ran.returncode == 2, ran.stderr
        assert f"argument {argv[0]}: an empty value" in ran.stderr
    assert not hub_paths.database.exists()
