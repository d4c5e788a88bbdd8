"""Deploy states: the rule that makes a redelivered release list harmless, and the file
that keeps it across restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.deploystate import KEEP_PER_MODEL, DeployStates, Record

SHA_A, SHA_B = "a" * 64, "b" * 64


def record(version: str, state: str, sha: str = SHA_A, **kw: object) -> Record:
    return Record("vib", version, sha, state, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kept", "serving", "rolled_back", "action"),
    [
        (None, "1.0.0", "", "deploy"),  # never seen
        (record("1.1", "active"), "1.1", "", "skip"),  # the retained list again
        # Active once, something else serves now.
        (record("1.1", "active"), "1.0.0", "", "deploy"),
        # What it replaced serves, and the directory says a roll-back gave 1.1 up: the
        # roll-back's own record was lost (a kill right after it).
        (record("1.1", "active", previous="1.0.0"), "1.0.0", "1.1", "mark_rolled_back"),
        # What it replaced serves, but no roll-back put it back: an operator's `models
        # install` of 1.0.0, or a data folder from before the word was written.
        (record("1.1", "active", previous="1.0.0"), "1.0.0", "", "deploy"),
        (record("1.1", "active", previous="1.0.0"), "1.0.0", "1.2", "deploy"),  # not 1.1's
        (record("1.1", "active", previous="0.9"), "1.0.0", "1.1", "deploy"),  # the control
        (record("1.1", "failed", detail="bad sha"), "1.0.0", "", "report"),
        (record("1.1", "rolled_back"), "1.0.0", "1.1", "report"),
        (record("1.1", "failed", final=False), "1.0.0", "", "deploy"),  # e.g. policy said no
        (record("1.1", "downloading"), "1.0.0", "", "deploy"),  # interrupted: resume
        (record("1.1", "failed", sha=SHA_B), "1.0.0", "", "deploy"),  # other bytes
        (record("1.1", "failed", sha=""), "1.0.0", "", "deploy"),  # a bad signature's claim
    ],
)
def test_decide(kept: Record | None, serving: str, rolled_back: str, action: str) -> None:
    states = DeployStates([kept] if kept else [])
    assert states.decide(("vib", "1.1", SHA_A), serving, rolled_back=rolled_back) == action


def test_the_newest_record_of_a_model_is_its_current_one() -> None:
    states = DeployStates()
    states.put(record("1.1", "downloading"))
    states.put(Record("cam", "2.0", SHA_B, "active"))
    states.put(record("1.1", "active", previous="1.0"))

    assert [(r.name, r.version, r.state) for r in states.latest()] == [
        ("cam", "2.0", "active"),
        ("vib", "1.1", "active"),
    ]
    assert states.find(("vib", "1.1", SHA_A)) == record("1.1", "active", previous="1.0")


def test_a_new_active_version_retires_the_old_active_record_but_not_failures() -> None:
    states = DeployStates()
    states.put(record("1.1", "active"))
    states.put(record("1.2", "failed", detail="self-test"))
    states.put(record("1.3", "active"))

    assert states.find(("vib", "1.1", SHA_A)) is None
    assert states.decide(("vib", "1.2", SHA_A), "1.3", rolled_back="") == "report"
    assert states.decide(("vib", "1.3", SHA_A), "1.3", rolled_back="") == "skip"


def test_only_the_last_few_records_of_a_model_are_kept() -> None:
    states = DeployStates()
    for n in range(KEEP_PER_MODEL + 3):
        states.put(record(f"1.{n}", "failed"))
    states.put(Record("cam", "1", SHA_B, "failed"))

    kept = [n for n in range(KEEP_PER_MODEL + 3) if states.find(("vib", f"1.{n}", SHA_A))]
    assert kept == list(range(3, KEEP_PER_MODEL + 3))
    assert states.find(("cam", "1", SHA_B)) is not None


def test_states_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "models" / ".deploy-states.json"
    states = DeployStates()
    states.put(record("1.1", "failed", detail="sha256 differs"))
    states.put(record("1.2", "active", previous="1.0"))
    states.put(Record("cam", "2.0", "", "failed", "signature does not verify"))
    states.save(path)

    again = DeployStates.load(path)
    assert again.latest() == states.latest()
    assert again.decide(("vib", "1.1", SHA_A), "1.2", rolled_back="") == "report"
    assert again.find(("vib", "1.1", SHA_A)) == record("1.1", "failed", detail="sha256 differs")


def test_a_missing_or_damaged_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "states.json"
    assert DeployStates.load(path).latest() == []
    path.write_text("{not json")
    assert DeployStates.load(path).latest() == []
    path.write_text(json.dumps({"format": 99, "releases": []}))
    assert DeployStates.load(path).latest() == []


def test_a_damaged_record_is_dropped_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "states.json"
    good = record("1.1", "failed", detail="x")
    states = DeployStates([good])
    body = json.loads(states.dump())
    body["releases"] += [
        {**body["releases"][0], "state": "exploded"},
        {**body["releases"][0], "final": "yes"},
        {"name": "vib"},
        "nonsense",
    ]
    path.write_text(json.dumps(body))

    assert DeployStates.load(path).latest() == [good]


def test_a_report_fits_the_wire_limits() -> None:
    message = Record("n" * 80, "v" * 40, "", "failed", "d" * 900).message()
    assert (len(message.name), len(message.version), len(message.detail)) == (64, 32, 512)
