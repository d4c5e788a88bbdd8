"""The data folder lock: one holder at a time, who it is, and gone with its process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outpost import datalock
from outpost.datalock import AlreadyRunningError, DataLock

HOLD = (
    "import sys, pathlib\n"
    "from outpost.datalock import DataLock\n"
    "lock = DataLock.acquire(pathlib.Path(sys.argv[1]), 'outpost-test', web='https://x')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(AlreadyRunningError) as refused:
            DataLock.acquire(tmp_path, "outpost-hub")
        assert (
            str(refused.value)
            == f"another outpost-test (pid {holder.pid}) is running on {tmp_path}"
        )
        seen = datalock.holder(tmp_path)
        assert seen is not None
        assert (seen.pid, seen.program, seen.info) == (
            holder.pid,
            "outpost-test",
            {"web": "https://x"},
        )
    finally:
        holder.kill()  # as kill -9 would: the lock goes with the process
        holder.wait()
    assert datalock.holder(tmp_path) is None
    with DataLock.acquire(tmp_path, "outpost-hub") as lock:
        seen = datalock.holder(tmp_path)
        assert seen is not None
        assert seen.program == "outpost-hub"
    lock.release()  # idempotent
    assert datalock.holder(tmp_path) is None


def test_the_same_process_cannot_hold_a_folder_twice(tmp_path: Path) -> None:
    with DataLock.acquire(tmp_path, "outpost-agent"), pytest.raises(AlreadyRunningError):
        DataLock.acquire(tmp_path, "outpost-agent")
    assert datalock.holder(tmp_path) is None


def test_no_lock_file_means_nobody_runs(tmp_path: Path) -> None:
    assert datalock.holder(tmp_path) is None
    assert not (tmp_path / datalock.LOCK_NAME).exists()
