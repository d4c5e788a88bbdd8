"""The README's demo, run for a short while: three agents enroll and come online, the
north site's link is cut and restored, its backlog drains, and everything stops."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import REPO


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: the demo's agents serve on Unix sockets in their data
    folders, and a socket path may not pass 107 bytes (pytest-xdist's worker folders
    under tmp_path, with the demo's own, would)."""
    folder = Path(tempfile.mkdtemp(prefix="demo-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# A row of the store-and-forward table with the link up: agent, results confirmed,
# waiting on the device, held by the hub, the batch encoding and its share of plain.
STORE_ROW = re.compile(
    r"^([a-z0-9-]+)\s+up\s+(\d+)\s+(\d+)\s+(\d+)\s+([a-z0-9-]+): \d+ B \(([\d.]+)x\), "
    r"batches up to (\d+) KiB\s*$",
    re.MULTILINE,
)


def test_demo_shows_three_agents_online_and_stops_everything(short_dir: Path) -> None:
    data = short_dir / "demo"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            "--duration",
            "26",
            "--cut-at",
            "3",
            "--cut-for",
            "5",
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    # The operator's mistyped policy layer is refused with the field named.
    assert "400 body.document.heartbeat_intervall: unknown key (known keys:" in done.stdout
    last_table = done.stdout.rsplit("Outpost fleet at", 1)[1]
    rows = [line for line in last_table.splitlines() if re.match(r"\S+\s+dev-", line)]
    assert len(rows) == 3, last_table
    assert all(re.search(r"\s+online\s+\d+\.\d s ago", row) for row in rows), last_table
    # The fleet table names each device as it enrolled (--name), beside its id.
    assert {
        ("pump-station", "raspberry-pi-4"),
        ("camera-gate", "jetson-orin-nano"),
        ("line-3-gateway", "x86-gateway"),
    } == {(row.split()[0], row.split()[2]) for row in rows}
    assert "stopped 4 processes" in done.stdout
    # A second hub on the demo's data folder is refused at once, naming the first.
    assert re.search(
        r"a second hub on the same data folder is refused \(exit 2\): outpost-hub: error: "
        r"another outpost-hub \(pid \d+\) is running on ",
        done.stdout,
    ), done.stdout[:3000]
    assert "cutting the north site's link for 5 s" in done.stdout
    assert "the north site's link is back. Its agents lost their connections" in done.stdout
    assert "never over 60 s (reconnect_max_delay)" in done.stdout
    assert re.search(r"pump-station is back online [\d.]+ s after its link", done.stdout)
    # The closing verdict, from the producers' logs and the hub's records.
    verdict = re.search(
        r"every confirmed result arrived exactly once: ([\d,]+) of ([\d,]+)", done.stdout
    )
    assert verdict, done.stdout[-3000:]
    assert verdict.group(1) == verdict.group(2)
    assert int(verdict.group(1).replace(",", "")) > 100
    assert "POLICY: the version of the hub-signed policy the agent runs" in done.stdout
    # Each sensor program's median wait for a local answer, in the inference table.
    waits = re.findall(
        r"^(pump-station|camera-gate|line-3-gateway)\s+\S+\s+\d+\s+\d+\s+\d+\s+\S+ [\d.]+"
        r"\s+([\d.]+) ms",
        done.stdout,
        re.MULTILINE,
    )
    assert {name for name, _ in waits} == {"pump-station", "camera-gate", "line-3-gateway"}
    assert all(float(ms) > 0 for _, ms in waits)
    during_cut = re.findall(
        r"^(pump-station|camera-gate)\s+CUT\s+(\d+)\s+(\d+)", done.stdout, re.MULTILINE
    )
    assert any(int(waiting) > 0 for _, _, waiting in during_cut), "no backlog while cut"
    forwarded = STORE_ROW.findall(last_table)
    final = {m[0]: (int(m[1]), int(m[2]), int(m[3])) for m in forwarded}
    assert set(final) == {"pump-station", "camera-gate", "line-3-gateway"}, last_table
    # Every agent's batches go compressed, and smaller than plain, on the link.
    assert all(m[4] == "zstd-dict1" and float(m[5]) < 1.0 for m in forwarded), last_table
    # Each agent's batch budget, between its floor and the 200 KiB setting.
    assert all(4 <= int(m[6]) <= 200 for m in forwarded), last_table
    for name, (confirmed, waiting, held) in final.items():
        # A batch posted in the last second may still be on its way.
        assert confirmed - held <= 10, (name, confirmed, held)
        assert waiting <= 10, (name, waiting)
    hub_log = (data / "logs" / "hub.log").read_text()
    assert "broker stopped" in hub_log
    assert "hub stopped" in hub_log
    for name in ("pump-station", "camera-gate", "line-3-gateway"):
        assert "agent stopped" in (data / "logs" / f"{name}.log").read_text()
    # Every device runs both shipped models (its sensor program's inferences go on while
    # its site's link is cut, and the flagged ones are counted in the results above),
    # and an admin rolled vibration-anomaly 1.1.0 out to all three, one canary first.
    assert all("surface-defect@1.0.0,vibration-anomaly@1.1.0" in row for row in rows), last_table
    assert re.search(r"model roll-out 1 of vibration-anomaly 1\.1\.0 .*: completed:", last_table)
    assert "roll-out 1 to every device: one canary first" in done.stdout
    answered = {
        m[0]: (int(m[1]), int(m[2]), int(m[3]))
        for m in re.findall(
            r"^([a-z0-9-]+)\s+(?:vibration-anomaly|surface-defect)\s+(\d+)\s+(\d+)\s+(\d+)",
            last_table,
            re.MULTILINE,
        )
    }
    assert set(answered) == set(final), last_table
    for name, (inferences, flagged, errors) in answered.items():
        assert inferences > 20, (name, inferences)
        assert 0 < flagged < inferences, (name, flagged)
        assert errors == 0, (name, errors)
    during = [
        int(m)
        for frame in done.stdout.split("Outpost fleet at")
        if re.search(r"^pump-station\s+CUT", frame, re.MULTILINE)
        for m in re.findall(r"^pump-station\s+vibration-anomaly\s+(\d+)", frame, re.MULTILINE)
    ]
    assert len(during) >= 2, during
    assert during[-1] > during[0], during
    # The operator's tasks ran on every device (the cameras' images on the camera gate).
    submitted, states = re.findall(r"^tasks \((\d+) submitted\): (.*)$", last_table, re.MULTILINE)[
        0
    ]
    assert int(submitted) > 0, last_table
    assert "failed" not in states, states
    assert "expired" not in states, states
    succeeded = int(re.search(r"(\d+) succeeded", states).group(1))  # type: ignore[union-attr]
    assert succeeded >= int(submitted) - 40, states  # the last two batches may be under way
    tasks_done = {
        m[0]: int(m[1])
        for m in re.findall(
            r"^([a-z0-9-]+)\s+(?:vibration|surface).*\s(\d+)/\d+/\d+\s+\S+\s*$",
            last_table,
            re.MULTILINE,
        )
    }
    assert set(tasks_done) == set(final), last_table
    assert all(n > 0 for n in tasks_done.values()), tasks_done
    # Every agent runs a signed policy from the hub.
    policies = re.findall(
        r"^([a-z0-9-]+)\s+(?:vibration|surface).*\s(v\d+|none)\s*$", last_table, re.MULTILINE
    )
    assert {name for name, _ in policies} == set(final), last_table
    assert all(version.startswith("v") for _, version in policies), policies
    # No bootstrap token is left lying around in the agents' folders.
    assert not list(data.rglob("bootstrap.token"))


@pytest.mark.timeout(180)
def test_demo_with_two_replicas_keeps_the_fleet_going_when_the_leader_is_killed(
    short_dir: Path,
) -> None:
    data = short_dir / "demo"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "demo.py"),
            *("--replicas", "2", "--duration", "24", "--cut-at", "2", "--cut-for", "3"),
            *("--data", str(data)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "configured by `outpost-hub broker-config`" in out
    assert "killing replica a (the leader) with SIGKILL" in out, out[-3000:]
    assert re.search(r"replica b took the lead [\d.]+ s after the kill", out), out[-3000:]
    last_table = out.rsplit("Outpost fleet at", 1)[1]
    assert "hub replicas on PostgreSQL: a killed, b up (leader)" in last_table
    rows = [line for line in last_table.splitlines() if re.match(r"\S+\s+dev-", line)]
    assert len(rows) == 3, last_table
    assert all(re.search(r"\s+online\s+\d+\.\d s ago", row) for row in rows), last_table
    assert "every confirmed result arrived exactly once" in out, out[-3000:]
    # After the kill the fleet went on: the roll-out completed, stores drained to the
    # surviving replica, tasks kept finishing.
    assert re.search(r"model roll-out 1 of vibration-anomaly 1\.1\.0 .*: completed:", last_table)
    final = STORE_ROW.findall(last_table)
    assert len(final) == 3, last_table
    for name, confirmed, waiting, held, _, _, _ in final:
        assert int(confirmed) - int(held) <= 10, (name, confirmed, held)
        assert int(waiting) <= 10, (name, waiting)
    submitted, states = re.findall(r"^tasks \((\d+) submitted\): (.*)$", last_table, re.MULTILINE)[
        0
    ]
    succeeded = int(re.search(r"(\d+) succeeded", states).group(1))  # type: ignore[union-attr]
    assert succeeded >= int(submitted) - 40, states
    assert "failed" not in states, states
    assert "stopped the throwaway PostgreSQL" in out


@pytest.mark.timeout(300)
def test_ctrl_c_on_the_demo_gives_the_verdict_then_stops_everything(short_dir: Path) -> None:
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group. The hub
    and agents run in sessions of their own, so only the demo gets it: it checks what the
    hub holds, then stops them (before, the hub stopped first and the check failed with
    a traceback)."""
    data = short_dir / "demo"
    out = short_dir / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py"), "--data", str(data)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a terminal gives a command
            # As a terminal's foreground command has it: a test run started in the
            # background of a shell without job control ignores SIGINT, and its children
            # inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        with _killed_at_the_end(demo):
            deadline = time.monotonic() + 90
            while "Outpost fleet at" not in out.read_text(errors="replace"):
                assert demo.poll() is None, out.read_text(errors="replace")
                assert time.monotonic() < deadline, "no fleet table within 90 s"
                time.sleep(0.2)  # a poll with a deadline
            os.killpg(demo.pid, signal.SIGINT)
            code = demo.wait(timeout=120)
    text = out.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    assert re.search(r"every confirmed result arrived exactly once: [\d,]+ of [\d,]+", text)
    assert "stopped 4 processes" in text


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(short_dir: Path) -> None:
    precious = short_dir / "thesis"
    precious.mkdir()
    (precious / "chapter-1.tex").write_text("months of work")

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--data", str(precious)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stdout + done.stderr  # a usage error
    assert "argument --data: " in done.stderr
    assert "is not a folder an earlier demo made" in done.stderr
    assert "Traceback" not in done.stderr
    assert (precious / "chapter-1.tex").read_text() == "months of work"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["--duration", "-5"], "argument --duration: -5"),
        (["--duration", "nan"], "argument --duration: nan"),
        (["--cut-for", "-1"], "argument --cut-for: -1"),
        (["--cut-at", "-2"], "argument --cut-at: -2"),
        (["--cut-at", "30", "--duration", "20"], "argument --cut-at: 30 s is not within"),
        (["--cut-for", "5", "--duration", "10"], "argument --cut-at: 12 s is not within"),
        (["--data", "/etc/passwd/x"], "argument --data: /etc/passwd/x: cannot make"),
        (["--replicas", "0"], "--replicas: give 2 or more, not 0"),  # not "one hub" quietly
        (["--replicas", "1"], "--replicas: give 2 or more, not 1"),
        (
            ["--data", "d" * 100],
            "is too long a path: the agents serve on Unix sockets",
        ),  # the agents' sockets: too long
    ],
)
def test_demo_refuses_a_bad_argument_before_it_starts_anything(
    short_dir: Path, given: list[str], named: str
) -> None:
    data = ["--data", str(short_dir / "demo")] if "--data" not in given else []
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), *data, *given],
        cwd=short_dir,  # a relative --data is made here, if at all
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert named in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # nothing started
    assert not (short_dir / "demo").exists()


def test_a_relative_data_folder_is_where_the_user_ran_the_demo(short_dir: Path) -> None:
    (short_dir / "README.md").write_text("a file, as the checkout has one too")

    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--data", "README.md/demo"],
        cwd=REPO,  # as ./scripts/demo runs it, naming where the user was
        env={**os.environ, "OUTPOST_CALLER_DIR": str(short_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"argument --data: {short_dir / 'README.md' / 'demo'}: cannot make" in done.stderr


@contextlib.contextmanager
def _killed_at_the_end(demo: subprocess.Popen[bytes]) -> Iterator[None]:
    """The demo's whole group killed on the way out if it is still running: a failed
    assertion must leave no fleet behind."""
    try:
        yield
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)


def _start_demo(short_dir: Path, out: Path, *args: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py"), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a terminal gives a command
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def _wait_for(demo: subprocess.Popen[bytes], out: Path, text: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in out.read_text(errors="replace"):
        assert demo.poll() is None, out.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r} within {seconds} s"
        time.sleep(0.1)  # a poll with a deadline


@pytest.mark.timeout(300)
def test_a_closed_terminal_and_ctrl_c_while_stopping_leave_nothing_running(
    short_dir: Path,
) -> None:
    """SIGHUP (the terminal closed) stops the demo as Ctrl-C does, and Ctrl-C pressed
    again and again while it stops neither prints a traceback nor leaves processes."""
    data = short_dir / "demo"
    out = short_dir / "demo.out"
    demo = _start_demo(short_dir, out, "--data", str(data))
    with _killed_at_the_end(demo):
        _wait_for(demo, out, "Outpost fleet at", 90)
        demo.send_signal(signal.SIGHUP)
        _wait_for(demo, out, "the producers stop", 60)
        deadline = time.monotonic() + 120
        while demo.poll() is None:  # Ctrl-C, again and again, until it has stopped
            assert time.monotonic() < deadline, "the demo did not stop"
            os.killpg(demo.pid, signal.SIGINT)
            time.sleep(0.2)  # the pace of an impatient user, not a synchronisation
        code = demo.wait()
    text = out.read_text(errors="replace")
    leftovers = _mine(data)  # at once: the demo returns once its processes are gone

    assert "Traceback" not in text, text[-3000:]
    assert "stopped 4 processes" in text
    assert leftovers == []
    # The verdict was given (0) or skipped by a Ctrl-C (130), never a silent success.
    assert code == (130 if "the verdict was skipped" in text else 0), text[-3000:]


@pytest.mark.timeout(120)
def test_ctrl_c_before_the_fleet_runs_exits_130_and_stops_what_started(short_dir: Path) -> None:
    data = short_dir / "demo"
    out = short_dir / "demo.out"
    demo = _start_demo(short_dir, out, "--data", str(data))
    with _killed_at_the_end(demo):
        _wait_for(demo, out, "enrolled as", 90)
        os.killpg(demo.pid, signal.SIGINT)
        code = demo.wait(timeout=60)
    text = out.read_text(errors="replace")

    assert code == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "stopped before the fleet ran: no verdict" in text
    assert _mine(data) == []


@pytest.mark.timeout(180)
def test_a_stop_while_the_agent_releases_build_leaves_no_build_running(short_dir: Path) -> None:
    """SIGTERM to the demo alone (as `kill` or a service manager sends it, not a
    terminal's Ctrl-C to the whole group) while `--agent-update` builds its releases:
    the build scripts and the pip each runs go with it."""
    data = short_dir / "demo"
    out = short_dir / "demo.out"
    demo = _start_demo(short_dir, out, "--agent-update", "--data", str(data))
    with _killed_at_the_end(demo):
        _wait_for(demo, out, "while the fleet comes up", 60)
        deadline = time.monotonic() + 60
        while not any(" pip " in line for line in _mine(data)):  # a build's pip has started
            assert demo.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, _mine(data)
            time.sleep(0.05)  # a poll with a deadline
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=60)
    text = out.read_text(errors="replace")

    assert code == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert _mine(data) == []


def _demo(data: Path, *flags: str, timeout: float) -> str:
    """scripts/demo.py with `flags` into `data`: its output, once it exited 0."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), *flags, "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "Task was destroyed" not in done.stdout + done.stderr  # a background task lost
    return done.stdout


# The options compose (each adds its part to one hub's demo): one run shows them all at
# once, as a user combining them would see, where a run each would start a hub and its
# agents five times (the test command's time is what CI waits for).


@pytest.mark.slow
@pytest.mark.timeout(660)
def test_demo_with_every_option_at_once(short_dir: Path) -> None:
    data = short_dir / "demo"
    out = _demo(
        data,
        *("--sinks", "--shadow", "--explain", "--courier", "--agent-update"),
        *("--duration", "18", "--cut-at", "2", "--cut-for", "3"),
        timeout=600,
    )

    # Sinks: a consumer on the bus holds what the hub delivered.
    lines = re.findall(
        r"^events on NATS JetStream \(stream OUTPOST\): a consumer holds ([\d,]+) distinct "
        r"\((\d+) repeats dropped by id\): (.*); hub's sink (\w+), delivered ([\d,]+), "
        r"lag ([\d,]+)$",
        out,
        re.MULTILINE,
    )
    assert lines, out[-3000:]
    held, _, kinds, _, delivered, _ = lines[-1]
    assert int(held.replace(",", "")) > 0
    # The consumer may see a chunk before the hub's cursor counts it (the cursor moves once
    # the bus acknowledged a chunk of at most 100), never more.
    assert int(held.replace(",", "")) <= int(delivered.replace(",", "")) + 100
    assert "task" in kinds
    assert "record" in kinds

    # Shadow: the candidate compared on live inputs, then promoted.
    compared = re.search(r"shadow comparison over (\d+) inputs: agreement ([\d.]+)", out)
    assert compared, out[-3000:]
    assert int(compared.group(1)) >= 40
    assert float(compared.group(2)) == 1.0  # the same network under a new version
    assert re.search(r"shadow roll-out \d+: (canary|rolling|completed) \(promoted", out)

    # Explanation: a result explained on the hub, drawn as a PNG.
    explained = re.search(r"explained camera-gate result (\d+) on the hub", out)
    assert explained, out[-3000:]
    png = (data / f"explanation-camera-gate-{explained.group(1)}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # Courier: a site with no link at all, carried by bundle.
    trips = re.findall(
        r"courier trip (\d+) to mine-shaft \(no link at all\): \d+ bundle part\(s\) carried to "
        r"the hub, which took ([\d,]+) new records",
        out,
    )
    assert len(trips) >= 2, out[-3000:]  # one on the timeline, one at the end
    assert sum(int(n.replace(",", "")) for _, n in trips) > 0
    verdict = re.search(
        r"every confirmed result arrived exactly once: ([\d,]+) of ([\d,]+) \(([\d,]+) of them "
        r"by courier bundle\)",
        out,
    )
    assert verdict, out[-3000:]
    assert verdict.group(1) == verdict.group(2)
    assert int(verdict.group(3).replace(",", "")) > 0
    last_table = out.rsplit("Outpost fleet at", 1)[1]
    # Never online: heard of by its bundles only.
    via_bundle = r"^mine-shaft\s+dev-\S+\s+raspberry-pi-4\s+offline\s+.*\(via bundle\)"
    assert re.search(via_bundle, last_table, re.MULTILINE), last_table
    assert re.search(r"^mine-shaft\s+none \(courier\)", last_table, re.MULTILINE), last_table

    # Agent update: a release of this checkout rolled out to a device under the launcher.
    updated = re.search(
        r"agent update: roll-out completed in [\d.]+ s; edge-updater runs (\S+) \(was (\S+)\), "
        r"its local API down for (\d+) ms; current -> releases/(\S+)",
        out,
    )
    assert updated, out[-3000:]
    new, old, _, current = updated.groups()
    assert new == current == f"{old}.1"


def _mine(marker: Path) -> list[str]:
    """Live processes whose command line names `marker` (a test's own folder)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(p.info["cmdline"] or [])
        if p.info["status"] != psutil.STATUS_ZOMBIE and str(marker) in line:
            found.append(line)
    return found


@pytest.mark.timeout(180)
def test_ctrl_c_while_postgresql_starts_leaves_no_server_or_folder(short_dir: Path) -> None:
    """A Ctrl-C during `initdb` or `pg_ctl -w start` kills the command (as root, the
    `runuser` in front of it), not the server it launched: the demo must stop what runs
    and delete the cluster's folder all the same."""
    work = short_dir / "tmp"  # the throwaway cluster's folder, so this test knows its own
    work.mkdir()
    for folder in (short_dir, work):  # as root, the server runs as `postgres`
        folder.chmod(0o755)
    command = [sys.executable, str(REPO / "scripts" / "demo.py"), "--replicas", "2"]
    demo = subprocess.Popen(
        [*command, "--data", str(short_dir / "demo")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TMPDIR": str(work)},
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    with _killed_at_the_end(demo):
        deadline = time.monotonic() + 120
        # Interrupted while pg_ctl starts the server, or while initdb runs its bootstrap
        # server (it writes a postmaster.pid too).
        while not (
            any("pg_ctl" in line and " start" in line for line in _mine(work))
            or list(work.glob("outpost-pg-*/data/postmaster.pid"))
        ):
            assert demo.poll() is None, demo.communicate()[0]
            assert time.monotonic() < deadline, "pg_ctl start never ran"
            time.sleep(0.02)  # a poll with a deadline
        os.killpg(demo.pid, signal.SIGINT)
        out, _ = demo.communicate(timeout=120)
    text = out.decode(errors="replace")

    assert "Traceback" not in text, text
    assert _mine(work) == [], text  # no PostgreSQL server left running
    assert list(work.iterdir()) == [], text  # nor its folder
