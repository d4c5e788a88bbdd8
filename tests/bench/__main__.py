"""Run the benchmarks and print Outpost's figures next to the raw limits measured in the
same run: `./scripts/bench` (all), `./scripts/bench codec store` or `--only codec store`
(those), `--quick` (codec, store and api: about a minute), `--list`, `--json FILE`.

Each benchmark runs in a process of its own, in a new session, with a deadline: one that
hangs is killed with everything it started, reported as timed out, and the rest still
run. Ctrl-C (or SIGTERM, SIGHUP) kills the running one the same way, writes what was
measured so far to --json and exits 130. Progress goes to stderr as each starts and ends;
the table to stdout. The exit status is 1 if any benchmark failed or timed out, 2 on a
usage error. tests/bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from tests.bench.common import HEADER, Result

REPO = Path(__file__).resolve().parents[2]

# name -> (what it measures, seconds it may take at most by default). The names are the
# modules' (tests/bench/bench_NAME.py), in the order a full run takes them.
BENCHMARKS: dict[str, tuple[str, float]] = {
    "codec": ("wire codec and the hub's per-device intake vs bare msgpack / asyncio.Queue", 300),
    "store": ("durable appends into the agent's store vs bare SQLite", 300),
    "drain": ("agent store -> hub database over mTLS MQTT vs bare MQTT", 600),
    "link": ("bytes per record on the wire and drain rate, zstd batches vs plain msgpack", 600),
    "ingest": ("heartbeats validated and stored by the hub vs bare MQTT", 600),
    "api": ("GET /api/v1/devices through the guard vs bare aiohttp", 300),
    "footprint": ("the agent's resident memory vs the floor of its imports", 300),
    "startup": ("agent exec to READY=1, and RSS after a minute idle", 600),
    "inference": ("the agent's runner and local API vs the bare interpreter loop", 900),
    "tasks": ("tasks end to end through hub and agents", 900),
    "allocation": ("the leader's allocation pass with 25,000 devices vs a bare read", 300),
    "rollout": ("release verification, model upload and a staged roll-out", 600),
    "monitoring": ("roll-ups folded into model statistics, drift, log lines", 600),
    "sinks": ("ingest with the outbox vs without; outbox -> webhook vs bare POSTs", 600),
    "operator": ("a CLI command and explained task lists vs bare aiohttp clients/servers", 600),
    "courier": ("courier bundles of 1,000,000 records: export, size, import vs bare", 600),
    "shadow": ("live answers with a candidate in shadow on every input vs no shadow", 600),
    "explain": ("one input explained on each shipped model vs bare invoke x its calls", 300),
    "agent_update": ("an agent release rolled out: install, restart, downtime vs bare", 900),
    "capacity": ("devices one hub holds, from outside with the fleet simulator", 7200),
}
# The benchmarks that take about a minute together, for a developer's loop.
QUICK = ("codec", "store", "api")
# The folder `./scripts/bench` was run from (it changes to the checkout before running
# this): a relative --json names a file there, as the user meant.
CALLER_DIR = "OUTPOST_CALLER_DIR"
# What `./scripts/bench` asks before it sets up: with this set, the arguments are checked
# (usage errors exit 2), the setup.sh options they need are printed, and nothing runs.
SETUP_QUERY = "OUTPOST_SETUP_QUERY"


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP: the running benchmark was killed; stop the run."""


def main() -> int:
    parser = _parser()
    args = parser.parse_args()
    chosen = [*args.names, *args.only] or (list(QUICK) if args.quick else list(BENCHMARKS))
    deadlines = dict(args.deadline)
    named = [name for name in deadlines if name]
    if unknown := [name for name in [*chosen, *named] if name not in BENCHMARKS]:
        parser.error(
            f"no benchmark named {', '.join(unknown)}; "
            f"choose from {', '.join(BENCHMARKS)} (--list says what each measures)"
        )
    if args.quick and (slow := [name for name in chosen if name not in QUICK]):
        parser.error(
            f"--quick runs only {', '.join(QUICK)}, not {', '.join(slow)}: leave out --quick "
            "to run the benchmarks you named in full"
        )
    if args.json is not None:
        args.json = _json_path(parser, args.json)
    if os.environ.get(SETUP_QUERY):
        print("--postgres" if "capacity" in chosen and not args.list else "")
        return 0
    if args.list:
        width = max(map(len, BENCHMARKS))
        for name, (about, deadline) in BENCHMARKS.items():
            quick = " (quick)" if name in QUICK else ""
            print(f"{name:<{width}}  {about}; deadline {deadline:.0f} s{quick}")
        return 0
    report: dict[str, Any] = {
        "commit": _commit(),
        "host": {
            "machine": platform.machine(),
            "cores": psutil.cpu_count(),
            "python": platform.python_version(),
        },
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "benchmarks": [],
    }
    host = report["host"]
    print(f"# {host['machine']}, {host['cores']} cores, Python {host['python']}", flush=True)
    print(HEADER, flush=True)
    failed = False
    # A closed terminal (SIGHUP) or a `kill` (SIGTERM) stops the run as Ctrl-C does:
    # otherwise the benchmark, in a session of its own, would run on with nobody to stop it.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    for name in chosen:
        deadline = deadlines.get(name) or deadlines.get("") or BENCHMARKS[name][1]
        try:
            outcome = _run_one(name, deadline)
        except Interrupted:
            report["benchmarks"].append(
                {"name": name, "status": "interrupted", "seconds": None, "results": []}
            )
            if args.json:
                _write_json(args.json, report)
            return 130
        failed |= outcome["status"] != "ok"
        report["benchmarks"].append(outcome)
        if args.json:  # written after each, so a long run leaves what it measured
            _write_json(args.json, report)
    return 1 if failed else 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _json_path(parser: argparse.ArgumentParser, given: Path) -> Path:
    """--json as the user meant it (relative to where they ran the command), checked
    before anything runs: a run of minutes must not end in a file it cannot write."""
    path = Path(os.environ.get(CALLER_DIR) or os.getcwd()) / given
    if path.is_dir():
        parser.error(f"argument --json: {given} is a folder; give a file name")
    if not path.parent.is_dir():
        parser.error(f"argument --json: {given}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        parser.error(f"argument --json: {given}: the folder {path.parent} is not writable")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (all)")
    parser.add_argument(
        "--only", nargs="+", action="extend", default=[], metavar="NAME", help="the same"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and stop")
    parser.add_argument(
        "--quick", action="store_true", help=f"only {', '.join(QUICK)} (about a minute)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every figure, the commit and host"
    )
    parser.add_argument(
        "--deadline",
        action="append",
        default=[],
        type=_deadline,
        metavar="[NAME=]SECONDS",
        help="kill a benchmark (every one, or NAME) that runs longer than this; may be "
        "given again (default: each one's own, see --list)",
    )
    return parser


def _deadline(text: str) -> tuple[str, float]:
    """`SECONDS` (every benchmark) or `NAME=SECONDS`, as ("" or NAME, seconds)."""
    name, _, seconds = text.rpartition("=")
    try:
        value = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give SECONDS or NAME=SECONDS") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a deadline must be above 0 seconds")
    return name, value


def _run_one(name: str, deadline: float) -> dict[str, Any]:
    """Run benchmark `name` in a child process; print its lines; return its outcome."""
    print(f"==> {name}: started (deadline {deadline:.0f} s)", file=sys.stderr, flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"outpost-bench-{name}-") as tmp:
        out = Path(tmp) / "results.json"
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.one", name, str(out), str(Path(tmp) / "work")],
            cwd=REPO,
            start_new_session=True,  # its own process group: killed whole on the deadline
        )
        try:
            code = child.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            code = None
        except KeyboardInterrupt:
            # Ctrl-C reaches only this process (the child has a session of its own): kill
            # the child with what it started before its folder goes, and ignore another
            # Ctrl-C meanwhile, which would leave them running.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_IGN)
            _kill_group(child)
            print(f"==> {name}: interrupted", file=sys.stderr, flush=True)
            raise Interrupted from None
        seconds = round(time.monotonic() - start, 1)
        results = json.loads(out.read_text()) if out.exists() else []
    for row in results:
        print(Result(**row).line(), flush=True)
    if code is None:
        status = f"timed out after {deadline:.0f} s"
    elif code != 0:
        status = f"failed (exit {code})"
    else:
        status = "ok"
    print(f"==> {name}: {status}, {seconds} s", file=sys.stderr, flush=True)
    rows = [{**row, "ratio": _ratio(row)} for row in results]
    return {"name": name, "status": status, "seconds": seconds, "results": rows}


def _kill_group(child: subprocess.Popen[bytes]) -> None:
    """Stop the child and everything it started: SIGTERM, then SIGKILL to what is left of
    its process group after 10 s."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            child.poll()  # reap the child; the group lives on while what it started does
            try:
                os.killpg(child.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)  # polling for the group to empty


def _ratio(row: dict[str, Any]) -> float | None:
    raw = row.get("raw")
    return round(row["ours"] / raw, 4) if raw else None


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def _write_json(path: Path, report: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # between two benchmarks: none of theirs is left running
        sys.exit(130)
