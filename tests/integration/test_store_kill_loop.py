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

ROUNDS = int(os.environ.get("OUTPOST_KILL_ROUNDS", "1000"))

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
    pid = os.fork()
    if pid == 0:
        try:
            asyncio.run(write(tag))
        finally:
            os._exit(1)
    os.write(1, f"pid {pid}\n".encode())
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


@pytest.mark.slow
def test_kill_9_loop_keeps_every_confirmed_append(tmp_path: Path) -> None:
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
    started = time.monotonic()
    try:
        for round_ in range(ROUNDS):
            forker.stdin.write(f"{round_}\n".encode())
            pid_line = forker.stdout.readline().split()
            assert pid_line[0] == b"pid", pid_line
            pid = int(pid_line[1])
            # A random instant: often while the store opens, mostly mid-append.
            time.sleep(rng.uniform(0, 0.03))
            os.kill(pid, signal.SIGKILL)
            oks = 0
            fresh: dict[int, dict[str, int]] = {}
            while True:
                words = forker.stdout.readline().split()
                assert words, "the forker died"
                if words[0] == b"reaped":
                    break
                _, tag, n, first, last = words
                oks += 1
                for i, seq in enumerate(range(int(first), int(last) + 1)):
                    confirmed[(int(tag), int(n), i)] = seq
                    fresh[seq] = {"tag": int(tag), "n": int(n), "i": i}
                # Numbers only grow, across kills too: a confirmed seq is never reused.
                # (Gaps are fine: an append committed but killed before its answer.)
                assert int(first) > last_seq, (first, last_seq)
                last_seq = int(last)
            killed_before_any += oks == 0

            verdict, held = _stored(path)
            assert verdict == "ok", f"round {round_}: {verdict}"
            lost = set(confirmed.values()) - held.keys()
            assert not lost, f"round {round_}: confirmed seqs lost: {sorted(lost)[:10]}"
            for seq, body in fresh.items():
                assert msgpack.unpackb(held[seq]) == body, f"round {round_}: seq {seq} differs"
    finally:
        forker.stdin.close()
        forker.kill()
        forker.wait(10)
    elapsed = time.monotonic() - started
    print(
        f"\nstore kill -9 loop: {ROUNDS} rounds in {elapsed:.1f} s, "
        f"{len(confirmed)} confirmed records all present, "
        f"{killed_before_any} kills before the first confirmed append, integrity ok"
    )
    assert len(confirmed) > ROUNDS  # the kills did land mid-write, not only at start-up
