"""`outpost-hub bundle import --ack-out` and `bundle export --to` given a place they
cannot write, or a negative `--tasks`: refused before anything is imported or leased.

An import records its bundle and leases tasks into the ack; an ack that could then not
be written left those tasks with nobody to carry them until the lease ran out (days),
and the bundle's import again was refused as done already. Child processes, as a user
runs the command, against a real hub data folder and its SQLite store."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from hub.paths import HubPaths
from hub.store import HubStore, NewTask
from outpost.courier import parts
from tests.courier_rig import bundle, enroll, records, rig
from tests.support import REPO

DEVICE = "dev-acks00001"
TASKS = ["tsk-acks-0001", "tsk-acks-0002"]


def hub_cli(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", *map(str, argv)],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done


def stick_with_tasks_waiting(tmp_path: Path) -> tuple[HubPaths, Path]:
    """A hub with DEVICE enrolled and TASKS queued for it, and a stick holding one
    bundle of DEVICE."""
    stick = tmp_path / "stick"
    with rig(tmp_path) as r:
        site = asyncio.run(enroll(r, DEVICE))
        parts.write_parts(bundle(r, site, [records("results", [1, 2])]), stick, "dev", 1 << 30)
        now = time.time()
        made = [
            NewTask(
                task_id,
                "m",
                "",
                msgspec.msgpack.encode([[1]]),
                "int8",
                5,
                now + 30 * 86400,
                60,
                {"device": DEVICE},
                "test",
            )
            for task_id in TASKS
        ]
        asyncio.run(r.store.create_tasks(made, now=now))
    return r.paths, stick


def task_states(paths: HubPaths) -> list[str]:
    async def states() -> list[str]:
        store = HubStore(paths.database)
        try:
            found = [await store.task(task_id) for task_id in TASKS]
            return [t.state for t in found if t is not None]
        finally:
            store.close()

    return asyncio.run(states())


def test_an_ack_out_that_cannot_be_written_is_refused_before_the_import(tmp_path: Path) -> None:
    paths, stick = stick_with_tasks_waiting(tmp_path)
    a_file = tmp_path / "afile"
    a_file.write_text("mine\n")

    on_file = hub_cli("bundle", "import", "--data", paths.root, stick, "--ack-out", a_file)
    under_file = hub_cli(
        "bundle", "import", "--data", paths.root, stick, "--ack-out", a_file / "acks"
    )

    assert task_states(paths) == ["queued", "queued"]  # none leased into a lost ack
    assert on_file.returncode == 2
    assert f"--ack-out {a_file} is a file" in on_file.stderr
    assert under_file.returncode == 2
    assert "cannot write bundles there" in under_file.stderr
    for done in (on_file, under_file):
        assert "imported" not in done.stdout, done.stdout
    assert a_file.read_text() == "mine\n"
    # The same bundle, with a folder it can write: imported, its ack carrying the tasks.
    acks = tmp_path / "acks"
    again = hub_cli("bundle", "import", "--data", paths.root, stick, "--ack-out", acks)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 tasks leased to it in the ack bundle" in again.stdout
    assert len(list(acks.glob(f"outpost-hub-for-{DEVICE}-*.opb"))) == 1
    assert task_states(paths) == ["accepted", "accepted"]


def test_export_to_a_place_it_cannot_write_leases_nothing(tmp_path: Path) -> None:
    paths, stick = stick_with_tasks_waiting(tmp_path)
    # Imported without an ack: the hub learns the device's key, leases nothing.
    assert hub_cli("bundle", "import", "--data", paths.root, stick).returncode == 0
    a_file = tmp_path / "afile"
    a_file.write_text("mine\n")

    refused = hub_cli("bundle", "export", "--data", paths.root, "--device", DEVICE, "--to", a_file)

    assert task_states(paths) == ["queued", "queued"]  # none leased into a bundle not written
    assert refused.returncode == 2
    assert f"--to {a_file} is a file" in refused.stderr
    assert a_file.read_text() == "mine\n"
    to_site = tmp_path / "to-site"
    made = hub_cli("bundle", "export", "--data", paths.root, "--device", DEVICE, "--to", to_site)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "(2 tasks leased)" in made.stdout
    assert task_states(paths) == ["accepted", "accepted"]


def test_a_negative_task_count_is_refused_not_read_as_none(tmp_path: Path) -> None:
    """`--tasks -1` was taken as 0: the bundle imported (or exported) leasing nothing,
    without a word."""
    paths, stick = stick_with_tasks_waiting(tmp_path)
    acks = tmp_path / "acks"
    to_site = tmp_path / "to-site"

    imported = hub_cli("bundle", "import", "--data", paths.root, stick, "--ack-out", acks,
                       "--tasks", "-1")  # fmt: skip
    exported = hub_cli("bundle", "export", "--data", paths.root, "--device", DEVICE,
                       "--to", to_site, "--tasks", "-1")  # fmt: skip

    for done in (imported, exported):
        assert done.returncode == 2
        assert "--tasks -1: give how many tasks to lease" in done.stderr
    assert "imported" not in imported.stdout
    assert not acks.exists()
    assert not to_site.exists()
    assert task_states(paths) == ["queued", "queued"]
    # Not recorded as imported: the bundle is taken when given again.
    again = hub_cli("bundle", "import", "--data", paths.root, stick, "--ack-out", acks)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 tasks leased to it in the ack bundle" in again.stdout
