"""`kill -9` of a process writing to the agent store, a thousand times over: every
append the store confirmed is still there after the kill, and the file is sound."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import msgpack
import pytest

from tests.support import REPO

ROUNDS = int(os.environ.get("OUTPOST_KILL_ROUNDS", "500"))

# A warm parent: it imports the store once, then forks one writer per round (a fresh
# interpreter per round would cost ~150 ms; a fork costs ~1 ms). The writer opens the
# store, appends small batches and prints each confirmed range; the test kills it.
_FORKER = r"""
import asyncio, os, sys
from pathlib import Path
from edge.store import AgentStore, Bounds

path = Path(sys.argv[1])
bounds = {s: Bounds(0, 0, 0) for s in ("results", "events", "metrics")}

async def write(tag):
    store = AgentStore(path, bounds)
    await store.start()
    n = 0
    while True:
        n += 1
        batch = [{"tag": tag, "n": n, "i": i} for i in range(1 + n % 3)]
        done = await store.append("results", batch)
        os.write(1, f"ok {tag} {n} {done.first_seq} {done.last_seq}\n".encode())

for line in sys.stdin:
    tag = int(line)
    # The writer starts once its pid is out: both write to one stdout, and a loaded
    # machine could run the child's first "ok" ahead of the parent's "pid".
    go, started = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(started)
            os.read(go, 1)
            asyncio.run(write(tag))
        finally:
            os._exit(1)
    os.close(go)
    os.write(1, f"pid {pid}\n".encode())
    try:
        os.write(started, b"x")
    except BrokenPipeError:  # the test killed it before this line ran (a loaded machine)
        pass
    os.close(started)
    os.waitpid(pid, 0)
    os.write(1, f"reaped {pid}\n".encode())
"""


def _stored(path: Path) -> tuple[str, dict[int, bytes]]:
    """integrity_check's verdict and the results stream, read without the product's code."""
    with closing(sqlite3.connect(path)) as db:
        (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
        created = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchone()
        if not created:  # killed before the first open created the schema: nothing held
            return verdict, {}
        rows = db.execute("SELECT seq, body FROM records WHERE stream = 'results'").fetchall()
    return verdict, dict(rows)


def _note(
    words: list[bytes],
    confirmed: dict[tuple[int, int, int], int],
    fresh: dict[int, dict[str, int]],
    last_seq: int,
) -> int:
    """Record one confirmed append as the writer printed it; return its last seq."""
    _, tag, n, first, last = words
    for i, seq in enumerate(range(int(first), int(last) + 1)):
        confirmed[(int(tag), int(n), i)] = seq
        fresh[seq] = {"tag": int(tag), "n": int(n), "i": i}
    # Numbers only grow, across kills too: a confirmed seq is never reused.
    # (Gaps are fine: an append committed but killed before its answer.)
    assert int(first) > last_seq, (first, last_seq)
    return int(last)


@pytest.mark.slow
def test_kill_9_loop_keeps_every_confirmed_append(tmp_path: Path) -> None:
    """Even rounds die at a random instant (on a slow machine mostly while the store
    opens); odd rounds once the writer has confirmed an append, so kills land mid-write
    on a machine of any speed. What is asserted is what happened, never how much was
    written in the time: a fast machine writes more per round, a slow one less."""
    path = tmp_path / "store.db"
    rng = random.Random(os.environ.get("OUTPOST_KILL_SEED", "20261126"))
    forker = subprocess.Popen(
        [sys.executable, "-c", _FORKER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        bufsize=0,
    )
    assert forker.stdin is not None
    assert forker.stdout is not None
    # Every confirmed append: (round, n, i) -> the seq it was given.
    confirmed: dict[tuple[int, int, int], int] = {}
    last_seq = 0
    killed_before_any = 0
    killed_after_append = 0
    committed_unanswered = 0  # rounds whose kill fell between a commit and its answer
    started = time.monotonic()
    try:
        for round_ in range(ROUNDS):
            forker.stdin.write(f"{round_}\n".encode())
            pid_line = forker.stdout.readline().split()
            assert pid_line[0] == b"pid", pid_line
            pid = int(pid_line[1])
            fresh: dict[int, dict[str, int]] = {}
            oks = 0

            if round_ % 2:
                # Mid-write: after the first confirmed append, at a random instant.
                words = forker.stdout.readline().split()
                assert words[:1] == [b"ok"], f"round {round_}: the writer said {words}"
                last_seq = _note(words, confirmed, fresh, last_seq)
                oks += 1
                time.sleep(rng.uniform(0, 0.01))  # the kill's timing, on purpose
            else:
                # Anywhere: while the store opens, creates its schema, or mid-write.
                time.sleep(rng.uniform(0, 0.03))  # the kill's timing, on purpose
            os.kill(pid, signal.SIGKILL)
            while True:
                words = forker.stdout.readline().split()
                assert words, "the forker died"
                if words[0] == b"reaped":
                    break
                last_seq = _note(words, confirmed, fresh, last_seq)
                oks += 1
            killed_before_any += oks == 0
            killed_after_append += oks > 0

            verdict, held = _stored(path)
            assert verdict == "ok", f"round {round_}: {verdict}"
            lost = set(confirmed.values()) - held.keys()
            assert not lost, f"round {round_}: confirmed seqs lost: {sorted(lost)[:10]}"
            for seq, body in fresh.items():
                assert msgpack.unpackb(held[seq]) == body, f"round {round_}: seq {seq} differs"
            committed_unanswered += bool(held) and max(held) > last_seq
            # The store's record of its numbering never leads the database: no kill
            # makes the next open take a sound store for one that lost commits.
            assert not list(tmp_path.glob("store.db.corrupt-*")), f"round {round_}: set aside"
    finally:
        forker.stdin.close()
        forker.kill()
        forker.wait(10)
    elapsed = time.monotonic() - started
    print(
        f"\nstore kill -9 loop: {ROUNDS} rounds in {elapsed:.1f} s, "
        f"{len(confirmed)} confirmed records all present, "
        f"{killed_before_any} kills before the first confirmed append, "
        f"{killed_after_append} after one, {committed_unanswered} between a commit and "
        "its answer; integrity ok"
    )
    # The kills did land mid-write (every odd round waited for a confirmed append).
    assert killed_after_append >= ROUNDS // 2
