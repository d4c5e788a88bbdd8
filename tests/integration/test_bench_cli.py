"""`./scripts/bench` as a tool: it lists what it has, refuses a name it does not know,
writes machine-readable figures, and kills a benchmark that passes its deadline, or is
interrupted, with everything that benchmark started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import REPO


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_list_names_every_benchmark_module() -> None:
    listed = bench("--list")

    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines()}
    modules = {p.stem.removeprefix("bench_") for p in (REPO / "tests" / "bench").glob("bench_*.py")}
    assert names == modules


def test_an_unknown_benchmark_or_a_bad_deadline_is_refused_naming_it() -> None:
    refused = bench("--only", "codec", "nope")
    bad_deadline = bench("--deadline", "drain=soon", "codec")
    unknown_deadline = bench("--deadline", "dran=3", "codec")

    assert refused.returncode == 2
    assert "no benchmark named nope; choose from codec" in refused.stderr
    assert bad_deadline.returncode == 2
    assert "'drain=soon': give SECONDS or NAME=SECONDS" in bad_deadline.stderr
    assert unknown_deadline.returncode == 2
    assert "no benchmark named dran" in unknown_deadline.stderr
    for answer in (refused, bad_deadline, unknown_deadline):
        assert "Traceback" not in answer.stderr
        assert answer.stdout == ""  # nothing ran


def test_json_holds_every_figure_with_its_ratio_commit_and_host(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"

    done = bench("--only", "codec", "--json", str(out))

    assert done.returncode == 0, done.stderr
    assert "==> codec: started" in done.stderr
    assert "==> codec: ok" in done.stderr
    report = json.loads(out.read_text())
    assert report["commit"]
    assert report["host"]["cores"] >= 1
    (codec,) = report["benchmarks"]
    assert codec["name"] == "codec"
    assert codec["status"] == "ok"
    rows = {row["name"]: row for row in codec["results"]}
    heartbeat = rows["codec: encode+decode heartbeat, per message"]
    assert heartbeat["ratio"] == round(heartbeat["ours"] / heartbeat["raw"], 4)
    assert all(row["name"] in done.stdout for row in codec["results"])  # the table too


def test_a_benchmark_past_its_deadline_is_killed_with_what_it_started(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"

    # 1 s: the drain starts a hub, its broker and an agent and moves 20,000 records, which
    # a fast machine does in under 3 s (a clean-clone run did: 2.7 s), never in 1.
    done = bench("--deadline", "drain=1", "--only", "drain", "codec", "--json", str(out))

    assert done.returncode == 1
    assert "==> drain: timed out after 1 s" in done.stderr
    report = json.loads(out.read_text())
    assert [b["status"] for b in report["benchmarks"]] == ["timed out after 1 s", "ok"]
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if any("outpost-bench-drain-" in part for part in p.info["cmdline"] or [])
    ]
    assert leftovers == []  # the hub, its broker and the agent went with it


def _ours(marker: Path) -> list[list[str]]:
    """The command lines of live processes that name `marker` (a test's own folder)."""
    return [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline", "status"])
        if p.info["status"] != psutil.STATUS_ZOMBIE
        and any(str(marker) in part for part in p.info["cmdline"] or [])
    ]


@pytest.mark.parametrize(
    ("signum", "whole_group", "names"),
    [
        (signal.SIGINT, True, ["codec", "api"]),  # a terminal's Ctrl-C
        (signal.SIGTERM, False, ["api"]),
        (signal.SIGHUP, False, ["api"]),  # the terminal closed
    ],
)
def test_an_interrupted_run_kills_the_benchmark_and_keeps_what_was_measured(
    tmp_path: Path, signum: signal.Signals, whole_group: bool, names: list[str]
) -> None:
    out = tmp_path / "bench.json"
    err = tmp_path / "stderr"
    work = tmp_path / "tmp"  # the benchmarks' folders, so this test knows its own
    work.mkdir()
    with err.open("wb") as sink:
        bench_run = subprocess.Popen(
            [sys.executable, "-m", "tests.bench", "--only", *names, "--json", str(out)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "TMPDIR": str(work)},
            start_new_session=True,  # its own group, as a terminal gives a command
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 120
            while "==> api: started" not in err.read_text() or not _ours(work):
                assert bench_run.poll() is None, err.read_text()
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)  # a poll with a deadline
            if whole_group:
                os.killpg(bench_run.pid, signum)
            else:
                bench_run.send_signal(signum)
            code = bench_run.wait(timeout=60)
        finally:
            if bench_run.poll() is None:
                os.killpg(bench_run.pid, signal.SIGKILL)
    # Checked at once: the harness returns only once the benchmark's group is gone.
    leftovers = _ours(work)
    text = err.read_text()

    assert code == 130, text
    assert "==> api: interrupted" in text
    assert "Traceback" not in text
    assert leftovers == []
    report = json.loads(out.read_text())
    assert [b["status"] for b in report["benchmarks"]] == ["ok"] * (len(names) - 1) + [
        "interrupted"
    ]


def test_json_names_a_file_where_the_user_is_and_a_bad_one_is_refused_first(
    tmp_path: Path,
) -> None:
    def from_elsewhere(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.bench", *args],
            cwd=REPO,
            env={**os.environ, "OUTPOST_CALLER_DIR": str(tmp_path)},  # as scripts/bench sets
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    missing = from_elsewhere("--json", "no/such/x.json", "codec")
    folder = from_elsewhere("--json", str(tmp_path), "codec")
    relative = from_elsewhere("--json", "x.json", "codec")

    for refused in (missing, folder):
        assert refused.returncode == 2, refused.stderr
        assert "argument --json" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert refused.stdout == ""  # refused before anything ran
    assert f"the folder {tmp_path / 'no' / 'such'} does not exist" in missing.stderr
    assert "is a folder; give a file name" in folder.stderr
    assert relative.returncode == 0, relative.stderr
    assert json.loads((tmp_path / "x.json").read_text())["benchmarks"][0]["name"] == "codec"


def test_only_given_twice_runs_both_and_quick_refuses_a_slow_one() -> None:
    both = bench("--only", "codec", "--only", "store")
    quick_drain = bench("--quick", "drain")

    assert both.returncode == 0, both.stderr
    assert "==> codec: ok" in both.stderr
    assert "==> store: ok" in both.stderr
    assert quick_drain.returncode == 2
    assert "--quick runs only codec, store, api, not drain" in quick_drain.stderr
    assert quick_drain.stdout == ""
