"""`./scripts/bench` as a tool: it lists what it has, refuses a name it does not know,
writes machine-readable figures, and kills a benchmark that passes its deadline with
everything that benchmark started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

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
