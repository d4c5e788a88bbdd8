"""What a device writes is its word: record times far outside the calendar (valid on
the wire) must not break the hub's import, and one bundle that fails on the stick
must not keep the others from being imported (`outpost-hub bundle import`)."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from hub.cli import bundles as bundle_cli
from hub.courier.importer import BundleImporter, ImportOutcome
from outpost.courier import history, parts
from tests.courier_rig import Rig, Site, bundle, enroll, records, rig
from tests.support import REPO


@pytest.mark.parametrize("ts", [-1e17, 1e17, 1e300])
async def test_record_times_out_of_the_calendar_are_imported(tmp_path: Path, ts: float) -> None:
    with rig(tmp_path) as r:
        site = await enroll(r, "dev-clock0001")
        # As the agent makes it: the history summarised from the batches it carries.
        batches = [records("events", [1, 2], ts=ts)]
        sealed = bundle(r, site, batches, history=history.summarise(batches))
        outcome = await r.desk.importer.import_bundle(sealed)
        assert outcome.stored["events"] == 2
        assert "(not a date)" in outcome.history


def write_stick(r: Rig, stick: Path, made: list[tuple[Site, float]]) -> None:
    for n, (site, ts) in enumerate(made):
        batches = [records("results", [1, 2, 3], ts=ts)]
        sealed = bundle(r, site, batches, history=history.summarise(batches))
        parts.write_parts(sealed, stick, f"outpost-{n}", 1 << 30)


async def test_a_bundle_with_record_times_out_of_the_calendar_leaves_the_next_imported(
    tmp_path: Path,
) -> None:
    stick = tmp_path / "stick"
    with rig(tmp_path) as r:
        odd = await enroll(r, "dev-clock0001")
        good = await enroll(r, "dev-good00001")
        write_stick(r, stick, [(odd, 1e300), (good, 1.7e9)])
    result = subprocess.run(
        [sys.executable, "-m", "hub.cli", "bundle", "import", "--data", str(r.paths.root), stick],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "dev-clock0001: 3 new records" in output
    assert "dev-good00001: 3 new records" in output
    assert result.returncode == 0, output


def test_one_bundle_that_fails_leaves_the_others_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An import that fails with an error nobody foresaw (not a refusal) is reported by
    name; the command carries on with the next bundle and fails at the end."""
    stick = tmp_path / "stick"
    with rig(tmp_path) as r:
        broken = asyncio.run(enroll(r, "dev-broken001"))
        good = asyncio.run(enroll(r, "dev-good00001"))
        write_stick(r, stick, [(broken, 1.7e9), (good, 1.7e9)])
    genuine = BundleImporter.import_bundle

    async def failing(self: BundleImporter, sealed: bytes, **kwargs: object) -> ImportOutcome:
        outcome = await genuine(self, sealed, answer=False)
        if outcome.device_id == broken.device_id:
            raise OSError(5, "Input/output error")
        return outcome

    monkeypatch.setattr(BundleImporter, "import_bundle", failing)
    args = argparse.Namespace(
        data=r.paths.root,
        config=None,
        paths=[stick],
        ack_out=None,
        lease=7 * 86400.0,
        tasks=100,
        max_size=1 << 30,
    )
    assert bundle_cli.import_bundles(args) == 1
    out = capsys.readouterr().out
    assert "not imported, it failed: OSError: [Errno 5] Input/output error" in out
    assert "dev-good00001: 3 new records" in out
