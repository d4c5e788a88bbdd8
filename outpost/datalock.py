"""One daemon per data folder: an exclusive `flock` on a lock file inside it.

A pid file proves nothing (another process can delete or overwrite it, and a stale one
names whatever process reuses the pid); a lock held on an open file lasts exactly as
long as the process that holds it, whatever kills it, and no other process can take it
away. The holder writes who it is into the file (pid, program and what it wants
commands beside it to know, such as the address of its API), so a second daemon can
say who is in the way and a command can find the running daemon.

The file is never deleted: removing it while another process waits on it would let two
holders lock two different files of the same name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOCK_NAME = ".lock"


class AlreadyRunningError(RuntimeError):
    """Another daemon holds the data folder's lock; the message names it."""

    def __init__(self, program: str, root: Path, holder: Holder | None) -> None:
        pid = f" (pid {holder.pid})" if holder and holder.pid else ""
        name = holder.program if holder and holder.program else program
        super().__init__(f"another {name}{pid} is running on {root}")
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a data folder's lock, as it wrote itself into the lock file."""

    pid: int
    program: str
    info: dict[str, Any] = field(default_factory=dict)


class DataLock:
    """The exclusive lock on one data folder, held from `acquire` until `release`."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root = root
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, root: Path, program: str, **info: Any) -> DataLock:
        """Lock `root` for this process or raise `AlreadyRunningError` at once (never
        waits). `info` (JSON-able) is written into the lock file for commands to read."""
        path = root / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise AlreadyRunningError(program, root, _read_holder(path)) from None
        lock = cls(root, fd)
        try:
            lock.update(program=program, **info)
        except BaseException:
            lock.release()
            raise
        return lock

    def update(self, *, program: str, **info: Any) -> None:
        """Rewrite who holds the lock (an address learnt after start, say)."""
        if self._fd is None:
            raise RuntimeError("the data folder lock was released")
        text = json.dumps({"pid": os.getpid(), "program": program, "info": info})
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, text.encode() + b"\n", 0)

    def release(self) -> None:
        """Let go of the lock (idempotent); closing the file releases it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> DataLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(root: Path) -> Holder | None:
    """Who runs on `root` now, or None if no process holds its lock."""
    path = root / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            # Held: the holder may still be writing itself in; report what is there.
            return _read_holder(path) or Holder(pid=0, program="")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(path: Path) -> Holder | None:
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        raw = json.loads(path.read_text())
        info = raw.get("info")
        return Holder(
            pid=int(raw["pid"]),
            program=str(raw["program"]),
            info=info if isinstance(info, dict) else {},
        )
    return None
